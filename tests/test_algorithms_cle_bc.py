"""Contracts of batch-norm folding, cross-layer equalization and bias correction (seeded, small)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowbit import QuantConfig
from lowbit.algorithms import ALGORITHMS, AlgorithmContext
from lowbit.algorithms.bias_correction import BiasCorrection, corrected_layers, mean_errors
from lowbit.algorithms.bn_fold import BatchNormFolding
from lowbit.algorithms.equalization import CrossLayerEqualization, equalize_model, find_pairs
from lowbit.api import make_plan
from lowbit.data import as_feeds
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.session import session
from lowbit.load.prepare import PreparedModel, name_nodes

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seeded_rng():
    """Every test draws its weights and inputs from the same seed, whatever ran before it: a bound
    measured on one test order must not move when tests are added, run alone or in another order."""
    global RNG
    RNG = np.random.default_rng(0)


def _w(name: str, *shape: int, spread: bool = True) -> onnx.TensorProto:
    w = RNG.standard_normal(shape).astype(np.float32)
    if spread:  # very different ranges per output channel, as after batch-norm folding
        w *= np.exp(RNG.uniform(-2.5, 2.5, (shape[0],) + (1,) * (len(shape) - 1))).astype(np.float32)
    return numpy_helper.from_array(w * 0.3, name)


def _b(name: str, n: int, shift: float = 0.0) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(n) * 0.5 + shift).astype(np.float32), name)


def _clip(i: str, o: str, hi: float | None) -> list[onnx.NodeProto]:
    if hi is None:
        return [helper.make_node("Relu", [i], [o])]
    return [helper.make_node("Clip", [i, "zero", f"{o}_hi"], [o])]


def _model(act_hi: float | None = None, bn: bool = False, head: bool = True) -> onnx.ModelProto:
    """x -> Conv(3->8) -> act -> DWConv(8, group 8) -> act -> Conv(8->6, 1x1) -> Relu
    -> GlobalAveragePool -> Flatten -> Gemm(6->5); optionally a BatchNormalization after the
    first Conv."""
    inits = [_w("w1", 8, 3, 3, 3), _b("b1", 8), _w("w2", 8, 1, 3, 3), _b("b2", 8), _w("w3", 6, 8, 1, 1),
             _b("b3", 6, 1.0), _w("w4", 5, 6), _b("b4", 5),
             numpy_helper.from_array(np.float32(0.0), "zero")]
    first = "c1"
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1])]
    if bn:
        inits += [numpy_helper.from_array(RNG.uniform(0.5, 2, 8).astype(np.float32), "g"), _b("be", 8),
                  _b("mu", 8), numpy_helper.from_array(RNG.uniform(0.5, 2, 8).astype(np.float32), "var")]
        nodes.append(helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn1"]))
        first = "bn1"
    for name in ("a1_hi", "a2_hi"):
        inits.append(numpy_helper.from_array(np.float32(act_hi or 6.0), name))
    nodes += _clip(first, "a1", act_hi)
    nodes.append(helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8))
    nodes += _clip("c2", "a2", act_hi)
    nodes.append(helper.make_node("Conv", ["a2", "w3", "b3"], ["c3"]))
    out = "c3"
    if head:
        nodes += [helper.make_node("Relu", ["c3"], ["a3"]), helper.make_node("GlobalAveragePool", ["a3"], ["p"]),
                  helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "w4", "b4"], ["y"],
                                                                                transB=1)]
        out = "y"
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    name_nodes(m)
    return onnx.shape_inference.infer_shapes(m)


def _x(n: int = 4) -> np.ndarray:
    return RNG.standard_normal((n, 3, 8, 8)).astype(np.float32)


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(m, optimize=False).run(None, {"x": x})[0]


def _ctx(calib=None) -> AlgorithmContext:
    return AlgorithmContext(calib, QuantConfig())


def _ranges(m: onnx.ModelProto, name: str, axis: int) -> np.ndarray:
    w = np.abs(GraphIndex(m).constant(name))
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).max(axis=1)


def test_registered_names():
    assert {"bn_fold", "cle", "bias_correction"} <= set(ALGORITHMS.names())
    assert CrossLayerEqualization.stage == BatchNormFolding.stage == "float" and BiasCorrection.stage == "plan"


def test_bn_fold_is_exact_and_removes_the_node():
    m = _model(bn=True)
    x = _x()
    out, _ = BatchNormFolding().apply(m, None, _ctx())
    assert not any(n.op_type == "BatchNormalization" for n in out.graph.node)
    np.testing.assert_allclose(_run(out, x), _run(m, x), rtol=1e-5, atol=1e-5)


def test_bn_without_a_layer_stays():
    m = _model(bn=True)
    # a second reader of the Conv's output makes the BN unfoldable
    m.graph.node.append(helper.make_node("Identity", ["c1"], ["c1_copy"], name="reader"))
    out, _ = BatchNormFolding().apply(m, None, _ctx())
    assert sum(n.op_type == "BatchNormalization" for n in out.graph.node) == 1


@pytest.mark.parametrize("act_hi", [None, 6.0])
def test_cle_keeps_the_float_function_and_equalizes(act_hi):
    m = _model(act_hi)
    x = _x()
    out, _ = CrossLayerEqualization().apply(m, None, _ctx())
    ref = _run(m, x)
    np.testing.assert_allclose(_run(out, x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    spread = lambda r: r.max() / r.min()  # noqa: E731
    if act_hi is None:  # Relu: all pairs equalized, the spread of the first layer's ranges shrinks
        # (numpy only, the same on every CPU: 46 -> 6.7 for this seed)
        assert spread(_ranges(out, "w1", 0)) < spread(_ranges(m, "w1", 0)) / 4
        assert spread(_ranges(out, "w2", 0)) < spread(_ranges(m, "w2", 0))
    else:  # bounded Clip (ReLU6): left alone by default, the weights do not change
        np.testing.assert_array_equal(GraphIndex(out).constant("w1"), GraphIndex(m).constant("w1"))


def test_cle_pairs_and_equal_ranges_through_depthwise():
    m = _model()
    pairs, _ = find_pairs(GraphIndex(m))
    assert [(p.first.op_type, p.second.op_type) for p in pairs] == [("Conv", "Conv")] * 2 + [("Conv", "Gemm")]
    out, _ = equalize_model(m)
    g = GraphIndex(out)
    # after convergence the depthwise layer's channel ranges match its neighbours' on each channel
    r1, r2 = _ranges(out, "w1", 0), _ranges(out, "w2", 0)
    r3 = _ranges(out, "w3", 1)
    np.testing.assert_allclose(r1, r2, rtol=1e-3)
    np.testing.assert_allclose(r2, r3, rtol=1e-3)
    assert g.constant("w4").shape == (5, 6)


def test_relu6_to_relu_equalizes_and_replaces_the_clip():
    m = _model(6.0)
    out, _ = CrossLayerEqualization(relu6_to_relu=True).apply(m, None, _ctx())
    ops = [n.op_type for n in out.graph.node]
    assert "Clip" not in ops
    assert _ranges(out, "w1", 0).max() / _ranges(out, "w1", 0).min() < _ranges(m, "w1", 0).max() / _ranges(
        m, "w1", 0).min()


def test_high_bias_absorption_is_exact_on_calibration_data():
    m = _model()
    x = _x(8)
    calib = as_feeds(x, _specs(m))
    out, _ = CrossLayerEqualization(absorb_high_bias=True).apply(m, None, _ctx(calib))
    ref = _run(m, x)
    np.testing.assert_allclose(_run(out, x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    b3 = GraphIndex(out).constant("b3")
    eq, _ = equalize_model(m)
    assert (b3 < GraphIndex(eq).constant("b3") - 1e-6).any()  # some bias was absorbed downstream (into Gemm)


def _specs(m: onnx.ModelProto):
    from lowbit.data import specs_from_onnx

    return specs_from_onnx(m)


@pytest.mark.parametrize("target", ["avx2", "vnni"])
def test_bias_correction_removes_the_mean_shift(target):
    """On both weight grids (7-bit for AVX2 without VNNI, 8-bit elsewhere): each layer's own mean
    shift (its output vs the float layer on the same quantized input) shrinks at least 4x, and on
    average over the layers 10x; the shift at the model output and the output MSE both shrink.
    (Measured on both grids: per-layer ratios 0.003-0.06, output shift 0.53-0.60 of before.)"""
    from lowbit.algorithms.bias_correction import channel_means
    from lowbit.emit.qdq import emit_simulation

    m = _model(head=False)
    # one-sided inputs make the weight rounding error show in the mean of every layer
    x = (np.abs(_x(64)) + 0.5).astype(np.float32)
    calib = as_feeds(x, _specs(m), batch_size=16)
    config = QuantConfig(target=target)
    float_model, plan = make_plan(PreparedModel(m, "t", "t", _specs(m)), config, calib)
    layers = corrected_layers(float_model, plan)
    assert len(layers) == 3

    def total_shift(model, p):  # per layer: mean over channels of |E[quantized] - E[float]|
        q = channel_means(emit_simulation(model, p), [l.sim_out for l in layers], calib)
        f = channel_means(float_model, [l.float_out for l in layers], calib)
        return np.array([np.abs(a - b).mean() for a, b in zip(q, f)])

    own_before = mean_errors(float_model, plan, calib, layers)
    shift_before = total_shift(float_model, plan)
    out, plan2 = BiasCorrection().apply(float_model, plan, AlgorithmContext(calib, config))
    own_after = mean_errors(out, plan2, calib, layers, reference=float_model)
    shift_after = total_shift(out, plan2)
    ratios = [np.abs(a).mean() / np.abs(b).mean() for a, b in zip(own_after, own_before)]
    assert max(ratios) < 0.25 and np.mean(ratios) < 0.1, ratios
    assert shift_after[-1] < 0.8 * shift_before[-1], (shift_before, shift_after)
    # the plan's int32 bias follows the corrected float bias
    b3 = GraphIndex(out).constant("b3")
    step = plan2.tensors["b3"].qparams.scale
    assert (np.abs(plan2.tensors["b3"].qparams.fake_quantize(b3) - b3) <= step / 2 + 1e-7).all()
    assert not np.allclose(b3, GraphIndex(float_model).constant("b3"))
    y = _run(float_model, x)
    mse_before = np.mean((_run(emit_simulation(float_model, plan), x) - y) ** 2)
    mse_after = np.mean((_run(emit_simulation(out, plan2), x) - y) ** 2)
    assert mse_after < mse_before


def test_reference_layers_read_weights_the_simulation_already_holds():
    """Weights already on the plan's grid (GPTQ's) are not copied for the float reference layers;
    the measured errors are those of separate copies."""
    from lowbit.algorithms import bias_correction as bc
    from lowbit.emit.qdq import emit_simulation

    m = _model(head=False)
    x = (np.abs(_x(32)) + 0.5).astype(np.float32)
    calib = as_feeds(x, _specs(m), batch_size=8)
    float_model, plan = make_plan(PreparedModel(m, "t", "t", _specs(m)), QuantConfig(), calib)
    layers = corrected_layers(float_model, plan)
    on_grid = onnx.ModelProto()
    on_grid.CopyFrom(float_model)
    g = GraphIndex(on_grid)
    for layer in layers:
        w = g.nodes[layer.node].input[1]
        grid = plan.tensors[w].qparams.fake_quantize(g.constant(w)).astype(np.float32)
        for i, t in enumerate(on_grid.graph.initializer):
            if t.name == w:
                on_grid.graph.initializer[i].CopyFrom(numpy_helper.from_array(grid, w))

    def copies(model):
        sim, _ = bc._with_reference_layers(emit_simulation(model, plan), model, layers)
        return {t.name for t in sim.graph.initializer if t.name.endswith("__float_ref")}

    weights = {f"{g.nodes[layer.node].input[1]}__float_ref" for layer in layers}
    assert weights <= copies(float_model)  # rounded in the simulation: the reference needs its own
    assert not weights & copies(on_grid)
    shared = mean_errors(on_grid, plan, calib, layers)
    saved = bc._same
    bc._same = lambda t, value: False
    try:
        copied = mean_errors(on_grid, plan, calib, layers)
    finally:
        bc._same = saved
    for a, b in zip(shared, copied):
        assert np.array_equal(a, b)
