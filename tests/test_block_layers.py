"""Layers the precision search can take out of per-tensor INT8 without leaving fast kernels:
INT8-stored weights in groups ('w8', folded at load) and 8-bit blocks run in int8 by MatMulNBits
('int8-block'): numerical contracts, ONNX Runtime against lowbit's simulation, and the search."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.search.mixed import layer_nodes, linear_block_choices, mixed_plan, plan_size_bytes
from lowbit.emit.weight_storage import stored_int8_nodes, w8_layout, weight_only_int8
from lowbit.onnx.session import session
from lowbit.verify.fusion import executed_graph

from conftest import TinyStem, image_like, scripted_search


def _sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - x).astype(np.float64) ** 2)))


def test_w8_groups_are_finer_than_channels_and_exact_on_their_grid():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 64, 1, 1)).astype(np.float32)
    w[:, 3] *= 40.0  # one input channel's weights set every output channel's range
    grouped, per_channel = weight_only_int8(w, 0), weight_only_int8(w, 0, group=64)
    assert grouped.ints.shape == (16, 2, 32) and per_channel.ints.shape == w.shape
    rest = slice(32, 64)  # the group without the outlier channel gets its own, 40x finer step
    assert _sqnr(w[:, rest], grouped.values()[:, rest]) > _sqnr(w[:, rest], per_channel.values()[:, rest]) + 20.0
    assert _sqnr(w, grouped.values()) > _sqnr(w, per_channel.values())
    assert np.abs(grouped.ints).max() <= 127 and grouped.scale.dtype == np.float16
    again = weight_only_int8(grouped.values(), 0)  # weights already on the grid: exact round trip
    np.testing.assert_array_equal(again.values(), grouped.values())
    assert grouped.nbytes == w.size + 2 * 16 * 2


def test_w8_layout_per_channel_where_groups_do_not_fit_and_fp32_scales_for_tiny_weights():
    assert w8_layout((32, 1, 3, 3), 0) == ((32, 1, 3, 3), (-1, 1, 1, 1))      # depthwise: K = 9
    assert w8_layout((128, 10), 1) == ((4, 32, 10), (4, 1, 10))               # MatMul (K, N)
    tiny = weight_only_int8(np.full((4, 64), 1e-7, np.float32), 0)            # below FP16's normal range
    assert tiny.scale.dtype == np.float32
    np.testing.assert_allclose(tiny.values(), 1e-7, rtol=1e-2)


def test_w8_subnormal_groups_store_zeros_without_nan():
    """Trained weights decayed to subnormals (~1e-44, PP-OCRv4 rec's squeeze-excitation convs) made
    amax / 127 underflow to a zero scale: 0 / 0 and a NaN cast to int8."""
    import warnings

    w = np.random.default_rng(2).normal(size=(4, 64)).astype(np.float32)
    w[1, :32] = np.float32(1.8e-44)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero or invalid cast
        stored = weight_only_int8(w, 0)
    assert np.all(stored.ints[1, 0] == 0) and np.all(np.isfinite(stored.values()))
    np.testing.assert_allclose(stored.values()[1, :32], 0.0, atol=1e-40)
    assert _sqnr(w[[0, 2, 3]], stored.values()[[0, 2, 3]]) > 35.0  # the other groups keep their grid


def _plain(w: np.ndarray) -> np.ndarray:
    step = np.abs(w).reshape(len(w), -1).max(1).reshape(-1, 1, 1, 1) / 127.0
    return np.clip(np.round(w / step), -127, 127) * step


def test_w8_depthwise_kernels_keep_their_sums_and_beat_plain_rounding_on_smooth_inputs():
    """High-pass kernels (sums near 0, as after a folded batch norm) see mostly their input's local
    mean: plain rounding's summed errors turn it into output error; kept sums do not."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 1, 3, 3)).astype(np.float32)
    w -= w.mean((2, 3), keepdims=True)  # depthwise edge detectors
    stored = weight_only_int8(w, 0)
    step = np.abs(w).reshape(64, -1).max(1) / 127.0
    exact = w / step.reshape(-1, 1, 1, 1)
    ints = stored.ints.astype(np.float64)
    assert np.abs(ints - exact).max() < 1.0                      # every weight one of its two grid points
    assert np.all(np.abs(ints).reshape(64, -1).max(1) == 127)   # the range is kept
    kept = np.abs((stored.values() - w).sum((1, 2, 3))) / step
    plain = np.abs((_plain(w) - w).sum((1, 2, 3))) / step
    assert kept.max() <= 0.5 + 1e-3 and plain.mean() > 2 * kept.mean(), (kept.mean(), plain.mean())
    # a smooth input (a mean plus a faint gradient and noise): the kept sums' output is far closer
    x = 1.0 + 0.05 * np.linspace(0, 1, 9).reshape(1, 3, 3) + 0.01 * rng.normal(size=(1000, 3, 3))
    ref = np.einsum("cij,nij->nc", w[:, 0], x)
    err = lambda v: np.square(np.einsum("cij,nij->nc", v[:, 0], x) - ref).sum()  # noqa: E731
    assert 10 * np.log10(err(_plain(w)) / err(stored.values())) > 6.0
    # weights already on the grid, and 1x1 convolutions, round as plainly as before
    np.testing.assert_array_equal(weight_only_int8(stored.values(), 0).values(), stored.values())
    pointwise = rng.normal(size=(16, 8, 1, 1)).astype(np.float32)
    one = weight_only_int8(pointwise, 0, group=8)
    np.testing.assert_array_equal(one.ints, np.round(pointwise / one.scale.astype(np.float32)))


def test_w8_kernel_sums_kept_for_depthwise_kernels_only():
    """A full convolution sums many kernels whose rounding errors partly cancel: its weights round
    plainly (keeping each kernel's sum there cost YOLOv8n and ddddocr accuracy)."""
    rng = np.random.default_rng(4)
    full = rng.normal(size=(8, 32, 3, 3)).astype(np.float32)  # K = 288: groups of 32
    stored = weight_only_int8(full, 0)
    assert stored.ints.shape == (8, 9, 32)
    np.testing.assert_array_equal(stored.ints, np.round(full.reshape(8, 9, 32) / stored.scale.astype(np.float32)))
    depthwise = rng.normal(size=(40, 1, 5, 5)).astype(np.float32)  # K = 25: one scale per channel
    dw = weight_only_int8(depthwise, 0)
    step = dw.scale.astype(np.float32).reshape(-1)
    assert np.all(np.abs((dw.values() - depthwise).sum((1, 2, 3))) <= 0.5 * step + 1e-6)
    assert np.all(np.abs(dw.values() - depthwise) < step.reshape(-1, 1, 1, 1) + 1e-7)


def test_w8_nodes_fold_at_load_and_onnx_runtime_computes_exactly_the_grid():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 64, 3, 3)).astype(np.float32)
    stored = weight_only_int8(w, 0)
    inits, nodes = stored_int8_nodes("w", stored)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes + [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    assert Counter(n.op_type for n in executed_graph(model).graph.node) == Counter({"Conv": 1})
    xs = rng.normal(size=(1, 64, 6, 6)).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(xs), torch.from_numpy(stored.values()), padding=1).numpy()
    np.testing.assert_allclose(session(model).run(None, {"x": xs})[0], ref, rtol=1e-4, atol=1e-4)


class WideHead(torch.nn.Module):
    """A classifier whose Gemm (K = 64) divides into blocks of 32."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 64, 3, padding=1)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def wide_head():
    torch.manual_seed(0)
    data = image_like(16, seed=3, size=16)
    r = lowbit.quantize(WideHead().eval(), "int8-fast", data[:8], example_inputs=torch.zeros(1, 3, 16, 16), verify=None)
    return r, data


def test_int8_block_classifier_runs_matmulnbits_int8_and_matches_the_simulation(wide_head):
    from lowbit.emit import emit_simulation
    from lowbit.emit.int4 import emit_mixed

    r, data = wide_head
    choices = linear_block_choices(r.float_model, r.plan)
    head = next(n for n in layer_nodes(r.plan) if r.plan.nodes[n].op == "Gemm")
    assert list(choices) == [head] and list(choices[head]) == ["int8-block"]
    plan = mixed_plan(r.float_model, r.plan, {head: "int8-block"}, choices=choices)
    deployed = emit_mixed(r.float_model, plan)
    nbits = next(n for n in deployed.graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: helper.get_attribute_value(a) for a in nbits.attribute}
    assert attrs["bits"] == 8 and attrs["accuracy_level"] == 4 and len(nbits.input) == 6  # with the Gemm's bias
    x = {session(deployed).get_inputs()[0].name: np.stack(data[8:])}
    out = session(deployed).run(None, x)[0]
    simulated = session(emit_simulation(r.float_model, plan)).run(None, x)[0]
    np.testing.assert_allclose(out, simulated, atol=1e-4 * np.abs(out).max())
    assert _sqnr(session(r.float_model).run(None, x)[0], out) > 35.0
    assert plan_size_bytes(r.float_model, plan) < plan_size_bytes(r.float_model, mixed_plan(
        r.float_model, r.plan, {head: "fp16"}))


def test_simulation_quantizes_the_input_per_block_as_matmulnbits_does():
    """MatMulNBits' int8 path quantizes its input per block at run time; the simulation does the
    same, so it is far closer to ONNX Runtime than fake-quantized weights alone."""
    from lowbit.core.dtypes import int8
    from lowbit.core.granularity import PerGroup
    from lowbit.core.qparams import QParams
    from lowbit.emit.int4 import emit_int4, emit_int4_simulation
    from lowbit.plan.quant_plan import NodePlan, QuantPlan, TensorPlan

    rng = np.random.default_rng(2)
    w = rng.normal(size=(128, 16)).astype(np.float32)
    x = rng.normal(size=(4, 128)).astype(np.float32) * np.exp(rng.normal(size=128)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q = QParams.for_tensor(w, int8, PerGroup(0, 32), True, True)
    plan = QuantPlan("int8", {"mm": NodePlan("mm", "MatMul", "int8-block", "test")},
                     {"w": TensorPlan("w", "weight", q, (float(w.min()), float(w.max())), "rtn")})
    deployed = session(emit_int4(model, plan)).run(None, {"x": x})[0]
    simulated = session(emit_int4_simulation(model, plan)).run(None, {"x": x})[0]
    weights_only = x @ q.fake_quantize(w)
    assert np.abs(deployed - simulated).max() < 0.1 * np.abs(deployed - weights_only).max()


def test_search_moves_a_float_classifier_onto_int8_blocks(wide_head):
    """Scripted metric: the head fails the budget in per-tensor INT8 but holds on 8-bit blocks; the
    search takes it there (smaller and faster than FP16)."""
    from lowbit.search.precision import search_precisions

    r, _ = wide_head
    conv = next(n for n in layer_nodes(r.plan) if r.plan.nodes[n].op == "Conv")
    head = next(n for n in layer_nodes(r.plan) if r.plan.nodes[n].op == "Gemm")
    scripted, ranking = scripted_search(r.plan, {head: {"int8": 0.5, "int8-block": 0.02},
                                                 conv: {"int8": 0.5, "w8": 0.5}})
    choices = linear_block_choices(r.float_model, r.plan)
    result = search_precisions(r.float_model, r.plan, scripted, 0.95, ranking, weight_only=True, max_evals=20,
                               choices=choices)
    assert result.met_budget
    assert result.chosen.promoted == {head: "int8-block", conv: "fp16"}
    assert result.reasons[head].startswith("int8-block")
    assert result.plan.nodes[head].precision == "int8-block"


def test_search_keeps_promoted_first_layers_in_fp32():
    """A layer promoted at the very start of the network gets FP32, not FP16 weights, as the fp16
    preset keeps them: there an FP16 rounding is amplified by every later layer (MobileNetV2: 1% of
    top-1 agreement), for a fraction of a percent of the bytes."""
    from lowbit.search.precision import search_precisions

    torch.manual_seed(0)
    data = image_like(8, seed=4, size=16)
    r = lowbit.quantize(TinyStem().eval(), "int8-fast", data, example_inputs=torch.zeros(1, 3, 16, 16), verify=None)
    stem, body = (next(n for n in layer_nodes(r.plan) if n.startswith(f"/{k}/")) for k in ("stem", "body"))
    scripted, ranking = scripted_search(r.plan, {n: {"int8": 0.5, "w8": 0.5} for n in (stem, body)})
    result = search_precisions(r.float_model, r.plan, scripted, 0.95, ranking, weight_only=True, max_evals=20)
    assert result.met_budget
    assert result.chosen.promoted == {stem: "fp32", body: "fp16"}
    assert result.reasons[stem].startswith("fp32")
