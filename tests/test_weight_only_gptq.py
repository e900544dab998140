"""GPTQ rounding of the weight-only form (lowbit.algorithms.weight_only_gptq): on the emitter's own
grid, closer to FP32 than round-to-nearest, and identical weights stay identical."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from lowbit.algorithms.gptq import _gptq_round
from lowbit.algorithms.weight_only_gptq import gptq_weight_only
from lowbit.core.fidelity import sqnr
from lowbit.data import as_feeds
from lowbit.data.spec import specs_from_onnx
from lowbit.emit.weight_storage import weight_only_int8
from lowbit.plan.quant_plan import NodePlan, QuantPlan


def _model(rng, shared=False):
    """x (N, 64, 8, 8) -> Conv 1x1 (64 -> 96) -> Relu -> Conv 1x1 (96 -> 64) [-> Conv with w1 again]."""
    cov = rng.normal(size=(64, 64)) / 8  # correlated input channels: where error feedback pays
    w1 = rng.laplace(0, 0.1, (96, 64, 1, 1)).astype(np.float32)
    w2 = rng.laplace(0, 0.1, (64, 96, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64, 8, 8])]
    if shared:  # a second layer with the same weight values, under its own name
        nodes.append(helper.make_node("Conv", ["y", "w3"], ["z"], name="conv3"))
        inits.append(numpy_helper.from_array(w1.copy(), "w3"))
        outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 96, 8, 8])]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64, 8, 8])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.einsum("ij,njhw->nihw", cov, rng.normal(size=(48, 64, 8, 8))).astype(np.float32)
    return model, x


def _w8_plan(model):
    return QuantPlan("int8", nodes={n.name: NodePlan(n.name, n.op_type, "w8") for n in model.graph.node
                                    if n.op_type == "Conv"})


def _nearest(model):
    """The weight-only form's round-to-nearest weights, as the emitter stores them."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(weight_only_int8(numpy_helper.to_array(t), 0).values(), t.name))
    return m


def _output(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_weights_land_on_the_emitters_grid_and_beat_round_to_nearest():
    rng = np.random.default_rng(0)
    model, x = _model(rng)
    calib = as_feeds(x[:32], specs_from_onnx(model), batch_size=8)
    out, rounded = gptq_weight_only(model, _w8_plan(model), calib)
    assert rounded == 2
    for t in out.graph.initializer:  # the emitter, re-deriving its grid, stores exactly these values
        w = numpy_helper.to_array(t)
        np.testing.assert_array_equal(weight_only_int8(w, 0).values(), w)
        original = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == t.name))
        assert np.array_equal(np.abs(weight_only_int8(w, 0).ints).max(axis=-1),
                              np.abs(weight_only_int8(original, 0).ints).max(axis=-1))  # the same grid
    held = x[32:]  # inputs GPTQ did not see
    ref = _output(model, held)
    assert sqnr(ref, _output(out, held)) > sqnr(ref, _output(_nearest(model), held)) + 1.0


def test_identical_weights_keep_round_to_nearest():
    rng = np.random.default_rng(1)
    model, x = _model(rng, shared=True)
    out, rounded = gptq_weight_only(model, _w8_plan(model), as_feeds(x[:16], specs_from_onnx(model), batch_size=8))
    assert rounded == 1  # conv2 only: conv1 and conv3 hold the same weights, stored once
    w1, w3 = (numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == n)) for n in ("w1", "w3"))
    np.testing.assert_array_equal(w1, w3)


def test_fixed_integers_are_kept_and_their_error_fed_back():
    rng = np.random.default_rng(2)
    k = 48
    x = rng.normal(size=(2000, k)) @ rng.normal(size=(k, k))
    h = (x.T @ x / len(x))[None]
    w = rng.normal(size=(1, 8, k)).astype(np.float32)
    s = np.full(w.shape, 0.05, np.float32)
    z = np.zeros(w.shape, np.int64)
    fixed = np.full(w.shape, np.nan, np.float32)
    fixed[:, :, 0] = np.round(w[:, :, 0] / 0.05) + 3  # held three steps away from nearest
    q = _gptq_round(w, [h.copy()], s, z, -127, 127, 16, 0.01, False, fixed)
    assert np.array_equal(q[:, :, 0], fixed[:, :, 0])
    q_free = _gptq_round(w, [h.copy()], s, z, -127, 127, 16, 0.01, False)
    pinned_after = q_free.copy()
    pinned_after[:, :, 0] = fixed[:, :, 0]

    def err(ints):
        d = (w - s * ints)[0]
        return float(np.einsum("ok,kl,ol->", d, h[0], d))

    assert err(q) < 0.5 * err(pinned_after)  # the hold's error is compensated by the later columns


def test_int8_dynamic_rounds_its_stored_conv_weights_when_given_data(tmp_path):
    """int8-dynamic needs no data; given calibration data, its INT8-stored Conv weights are
    GPTQ-rounded (recorded in the plan) and the model is closer to FP32 on inputs it did not see."""
    import lowbit

    rng = np.random.default_rng(4)
    model, x = _model(rng)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    plain = lowbit.quantize(str(path), "int8-dynamic", verify=None)
    fitted = lowbit.quantize(str(path), "int8-dynamic", x[:32], verify=None)
    assert plain.plan.decisions.algorithm_choices is None
    rounded = fitted.plan.decisions.algorithm_choices["weight-only-gptq"]["layers"]
    assert rounded >= 1 and any("rounded by GPTQ" in n for n in fitted.report.data["notes"])
    held = x[32:]
    ref = _output(model, held)
    assert sqnr(ref, _output(fitted.model, held)) > sqnr(ref, _output(plain.model, held)) + 1.0
    assert len(fitted.model.SerializeToString()) <= 1.01 * len(plain.model.SerializeToString())
