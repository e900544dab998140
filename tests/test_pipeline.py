"""End-to-end contracts of quantize(): QDQ structure, parity with lowbit's simulation, FP16,
dynamic INT8, plans that round-trip through JSON and the model's metadata."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

import lowbit
from lowbit.emit.metadata import plan_from_model
from lowbit.emit.qdq import INTEGERS
from lowbit.target.cpu import this_cpu

NO_LATENCY = lowbit.VerifyOptions(threads=())
# every quantizable layer in INT8, whatever this machine's kernels cost: for structural checks
INT8_ALL = lowbit.QuantConfig(objective="size")


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def test_int8_qdq_structure_and_parity(small_model_path, calib_arrays, eval_arrays):
    r = lowbit.quantize(small_model_path, INT8_ALL, calib_arrays, eval_data=eval_arrays, verify=NO_LATENCY)
    counts = op_counts(r.model)
    # 3 convs + gemm weights, 3 conv biases + gemm bias; ReLU6 folded into the conv outputs
    assert counts["Clip"] == 0 and counts["Relu"] == 0
    dq_weights = [n for n in r.model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in r.plan.tensors
                  and r.plan.tensors[n.output[0]].role in ("weight", "bias")]
    assert len(dq_weights) == 8
    n_acts = sum(1 for t in r.plan.tensors.values() if t.role == "activation")
    assert counts["QuantizeLinear"] == n_acts
    parity = r.report.variants[1]["parity"]
    assert parity["passed"], parity
    assert parity["outputs"]["within_one_step"] >= 0.999
    fid = r.report.variants[1]["fidelity"]
    assert fid["sqnr_db"] > 15 and fid["cosine"] > 0.98
    kernels = r.report.variants[1]["kernels"]
    assert kernels["unfused"] == [] and kernels["integer_kernels"] >= 4, kernels


def _two_convs_sharing_a_bias() -> onnx.ModelProto:
    """x -> Conv -> Relu -> Conv -> Relu, both convs reading one zero-bias initializer (as exporters
    de-duplicate the biases of BN-folded layers)."""
    rng = np.random.default_rng(0)
    h = onnx.helper
    inits = [onnx.numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             onnx.numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w2"),
             onnx.numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    nodes = [h.make_node("Conv", ["x", "w1", "b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             h.make_node("Conv", ["r1", "w2", "b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c2"], ["y"], name="relu2")]
    graph = h.make_graph(nodes, "shared_bias", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_shared_biases_still_fuse_into_integer_kernels():
    calib = [np.random.default_rng(i).random((1, 3, 16, 16), np.float32) for i in range(4)]
    r = lowbit.quantize(_two_convs_sharing_a_bias(), INT8_ALL, calib, eval_data=calib, verify=NO_LATENCY)
    kernels = r.report.variants[1]["kernels"]
    assert kernels["unfused"] == [] and kernels["integer_kernels"] == 2, kernels
    assert r.report.variants[1]["parity"]["passed"]


def test_kernel_check_names_layers_onnx_runtime_left_in_float():
    calib = [np.random.default_rng(i).random((1, 3, 16, 16), np.float32) for i in range(4)]
    r = lowbit.quantize(_two_convs_sharing_a_bias(), INT8_ALL, calib, verify=None)
    # one int32 bias shared by both layers: right for at most one of them, so ONNX Runtime cannot fuse
    model = onnx.ModelProto()
    model.CopyFrom(r.model)
    conv1, conv2 = (next(n for n in model.graph.node if n.name == c) for c in ("conv1", "conv2"))
    assert conv1.input[2] != conv2.input[2]
    conv2.input[2] = conv1.input[2]
    kernels = lowbit.verify.kernel_check(model.SerializeToString(), r.plan)
    assert [u["node"] for u in kernels["unfused"]] == ["conv2"], kernels


def test_weights_in_model_are_integers_of_the_plan(small_model_path, calib_arrays):
    r = lowbit.quantize(small_model_path, INT8_ALL, calib_arrays, verify=None)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in r.model.graph.initializer}
    for name, t in r.plan.tensors.items():
        if t.role != "weight":
            continue
        q = inits[f"{name}{INTEGERS}"]
        assert q.dtype == np.int8
        lo, hi = t.qparams.dtype.bounds(t.qparams.narrow)
        assert q.min() >= lo and q.max() <= hi


@pytest.mark.skipif(not this_cpu().u8s8_saturates or bool(os.environ.get("LOWBIT_TEST_CPU")),
                    reason="real saturation needs an AVX2 CPU without VNNI; test_parity_on_emulated_avx2_kernels "
                           "checks the same contract on every CPU")
def test_parity_catches_saturating_kernels(small_model_path, calib_arrays, eval_arrays):
    """Full 8-bit weights on an AVX2-without-VNNI CPU overflow ORT's int16 pair sums: the parity
    check must see it (this is why lowbit targets 7-bit weights there)."""
    cfg = lowbit.QuantConfig(target="vnni", objective="size")
    big = [x * 4 for x in calib_arrays]
    r = lowbit.quantize(small_model_path, cfg, big, eval_data=[x * 4 for x in eval_arrays], verify=NO_LATENCY)
    assert r.report.variants[1]["parity"]["layers"]["max_steps"] > 1


def _emulate_avx2_kernels(monkeypatch):
    """Parity's ONNX Runtime session computes its 1x1 INT8 convolutions as an AVX2 CPU without
    VNNI does (tests/isa_emulation.py), whatever CPU runs the test."""
    from isa_emulation import SaturatingSession

    import lowbit.verify.parity as parity
    import lowbit.verify.variants as variants

    real_check, real_session = parity.check_parity, parity.session

    def check(deployed, float_model, plan, data, max_batches=16):
        calls = []

        def session(model, **kw):  # the first session parity opens is the deployed model's
            sess = real_session(model, **kw)
            calls.append(model)
            return SaturatingSession(sess, float_model, plan) if len(calls) == 1 else sess

        monkeypatch.setattr(parity, "session", session)
        try:
            return real_check(deployed, float_model, plan, data, max_batches)
        finally:
            monkeypatch.setattr(parity, "session", real_session)

    monkeypatch.setattr(variants, "check_parity", check)


@pytest.mark.parametrize("target,saturates", [("vnni", True), ("avx2", False)])
def test_parity_on_emulated_avx2_kernels(small_model_path, calib_arrays, eval_arrays, monkeypatch, target,
                                         saturates):
    """The same contract on every CPU, with AVX2's pair-saturating arithmetic emulated: full 8-bit
    weights (the VNNI grid) overflow it and the parity check sees it at the layer; lowbit's 7-bit
    AVX2 grid computes exactly and passes."""
    from isa_emulation import saturating_pair_dot

    assert saturating_pair_dot(np.array([[255, 255]], np.uint8), np.array([[127, 127]], np.int8))[0, 0] == 32767
    assert saturating_pair_dot(np.array([[255, 255]], np.uint8), np.array([[63, 63]], np.int8))[0, 0] == 32130
    _emulate_avx2_kernels(monkeypatch)
    cfg = lowbit.QuantConfig(target=target, objective="size")
    big = [x * 4 for x in calib_arrays]
    r = lowbit.quantize(small_model_path, cfg, big, eval_data=[x * 4 for x in eval_arrays], verify=NO_LATENCY)
    parity = r.report.variants[1]["parity"]
    if saturates:
        assert parity["layers"]["max_steps"] > 1, parity
    else:
        assert parity["passed"] and parity["layers"]["max_steps"] <= 1, parity


def test_plan_json_round_trip_and_reapply(small_model_path, calib_arrays, tmp_path):
    r = lowbit.quantize(small_model_path, "int8-fast", calib_arrays, output=tmp_path / "a.onnx", verify=None)
    r.plan.save(tmp_path / "plan.json")
    again = lowbit.QuantPlan.load(tmp_path / "plan.json")
    assert again.to_json() == r.plan.to_json()
    r2 = lowbit.quantize(small_model_path, "int8", plan=tmp_path / "plan.json", output=tmp_path / "b.onnx", verify=None)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert r2.plan.to_json() == r.plan.to_json()


def test_plan_and_version_in_metadata(small_model_path, calib_arrays, tmp_path):
    r = lowbit.quantize(small_model_path, "int8", calib_arrays, output=tmp_path / "m.onnx", verify=None)
    m = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["lowbit.version"] == lowbit.__version__
    assert plan_from_model(m).to_json() == r.plan.to_json()


def test_repeated_runs_are_byte_identical(small_model_path, calib_arrays, tmp_path):
    a = lowbit.quantize(small_model_path, "int8", calib_arrays, output=tmp_path / "1.onnx", verify=None)
    b = lowbit.quantize(small_model_path, "int8", calib_arrays, output=tmp_path / "2.onnx", verify=None)
    assert (tmp_path / "1.onnx").read_bytes() == (tmp_path / "2.onnx").read_bytes()
    assert a.plan.to_json() == b.plan.to_json()


def test_input_model_is_never_modified(small_model_path, calib_arrays):
    before = small_model_path.read_bytes()
    proto = onnx.load(str(small_model_path))
    snapshot = proto.SerializeToString()
    lowbit.quantize(proto, "int8", calib_arrays, verify=None)
    assert proto.SerializeToString() == snapshot
    assert small_model_path.read_bytes() == before


def test_fp16_halves_size_and_keeps_float32_io(small_model_path, eval_arrays):
    r = lowbit.quantize(small_model_path, "fp16", eval_data=eval_arrays, verify=NO_LATENCY)
    assert r.model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert r.model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ref, fp16 = r.report.variants
    weight_bytes = lambda m: sum(t.ByteSize() for t in m.graph.initializer)  # noqa: E731
    assert weight_bytes(r.model) < 0.6 * weight_bytes(onnx.load(str(small_model_path)))  # + a few scalar copies
    assert fp16["size_bytes"] < ref["size_bytes"]
    assert fp16["fidelity"]["sqnr_db"] > 40


def test_fp16_arithmetic_only_where_the_cpu_has_it(small_model_path):
    """Without FP16 kernels (x86) only the storage is FP16: after load the graph ONNX Runtime runs is
    the FP32 one. On a target with FP16 arithmetic (arm64) the compute is FP16."""
    from lowbit.verify.fusion import executed_graph

    stored = lowbit.quantize(small_model_path, lowbit.QuantConfig(precision="fp16", target="avx2"), verify=None)
    early = {n for n, p in stored.plan.nodes.items() if p.precision == "fp32" and "first layers" in p.reason}
    first_weights = {i for n in stored.model.graph.node if n.name in early for i in n.input}
    assert {t.data_type for t in stored.model.graph.initializer
            if len(t.dims) > 1 and t.name not in first_weights} == {onnx.TensorProto.FLOAT16}
    executed = executed_graph(stored.model.SerializeToString())
    assert "Cast" not in op_counts(executed)  # the weight Casts were folded at load
    assert {t.data_type for t in executed.graph.initializer if len(t.dims) > 1} == {onnx.TensorProto.FLOAT}

    arithmetic = lowbit.quantize(small_model_path, lowbit.QuantConfig(precision="fp16", target="arm64"), verify=None)
    assert any(n.precision == "fp16" and "arithmetic" in n.reason for n in arithmetic.plan.nodes.values())
    value_types = {v.type.tensor_type.elem_type for v in arithmetic.model.graph.value_info}
    assert onnx.TensorProto.FLOAT16 in value_types


def test_int8_dynamic_quantizes_linear_layers(caplog):
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 32)).eval()
    data = [np.random.default_rng(i).normal(size=(1, 64)).astype(np.float32) for i in range(8)]
    r = lowbit.quantize(mlp, "int8-dynamic", example_inputs=torch.zeros(1, 64), eval_data=data, verify=NO_LATENCY)
    # ONNX Runtime's advice to run its own pre-processing does not reach the user: lowbit inferred the shapes
    assert not [m for m in caplog.messages if "pre-processing" in m]
    dyn = [n for n in r.plan.nodes.values() if n.precision == "int8-dynamic"]
    assert len(dyn) == 2
    assert r.report.variants[1]["size_bytes"] < 0.35 * r.report.variants[0]["size_bytes"]
    assert r.report.variants[1]["fidelity"]["cosine"] > 0.99


def test_torch_module_input_with_dynamic_batch(small_model_torch, calib_arrays):
    r = lowbit.quantize(small_model_torch, "int8", calib_arrays, example_inputs=torch.zeros(1, 3, 32, 32), verify=None)
    from lowbit.onnx.session import session

    s = session(r.model)
    out = s.run(None, {"input": np.stack(calib_arrays[:5])})[0]
    assert out.shape == (5, 10)


def test_keep_float_glob_and_skipped_reasons(small_model_path, calib_arrays):
    r = lowbit.quantize(small_model_path, lowbit.QuantConfig(keep_float=("*Gemm*",)), calib_arrays, verify=None)
    skipped = {s["name"]: s["reason"] for s in r.report.skipped}
    gemm = [n for n in skipped if "Gemm" in n]
    assert gemm and "keep_float" in skipped[gemm[0]]


def test_report_renders_everywhere(small_model_path, calib_arrays, eval_arrays, tmp_path):
    r = lowbit.quantize(small_model_path, "int8", calib_arrays, eval_data=eval_arrays,
                        verify=lowbit.VerifyOptions(threads=(1,), latency_runs=3))
    text = str(r.report)
    assert "int8" in text and "fp32" in text
    d = json.loads(r.report.to_json())
    assert d["schema"] == "lowbit.report/1" and d["variants"][1]["latency_ms"]["1"]["median"] > 0
    html = r.report.to_html()
    assert "<html" in html.lower() and "http://" not in html and "https://" not in html
    r.report.save_html(tmp_path / "r.html")
    assert (tmp_path / "r.html").stat().st_size > 1000


def test_latency_objective_keeps_slow_int8_layers_in_float(small_model_path):
    from lowbit.load.model import load_model
    from lowbit.load.prepare import prepare
    from lowbit.plan.selection import select
    from lowbit.target.layer_costs import LayerCost

    model = prepare(load_model(small_model_path)).proto
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    costs = {convs[0]: LayerCost(convs[0], "Conv", fp32_ms=0.1, int8_ms=0.3, fp16_ms=0.2),
             convs[1]: LayerCost(convs[1], "Conv", fp32_ms=0.3, int8_ms=0.1, fp16_ms=0.4),
             convs[2]: LayerCost(convs[2], "Conv", fp32_ms=0.1, int8_ms=0.3, fp16_ms=0.2)}
    # stem (432 of 992 weights) and pw (256) are slower in INT8; with a 50% float-weight budget the
    # greedy choice by time saved per weight keeps pw in float and has no room left for the stem
    from lowbit.plan.selection import slow_int8_layers

    assert set(slow_int8_layers(model, costs, budget=0.5)) == {convs[2]}
    assert set(slow_int8_layers(model, costs, budget=1.0)) == {convs[0], convs[2]}
    fast = select(model, lowbit.QuantConfig(), costs)
    # with the default 1% budget, no layer of this tiny net is small enough to stay float
    assert all(fast.nodes[c].precision == "int8" for c in convs)
    small = select(model, lowbit.QuantConfig(objective="size"), costs)
    assert small.nodes[convs[0]].precision == "int8"


def test_plan_with_weight_changing_algorithms_reapplies_to_its_float_model(small_model_path, calib_arrays, tmp_path):
    r = lowbit.quantize(small_model_path, "int8", calib_arrays, output=tmp_path / "a.onnx", verify=None)
    assert [a["name"] for a in r.plan.config["algorithms"]] == ["cle", "keep-if-better"]
    r.plan.save(tmp_path / "plan.json")
    with pytest.raises(lowbit.ConfigError, match="save-float-model"):
        lowbit.quantize(small_model_path, "int8", plan=tmp_path / "plan.json", verify=None)
    (tmp_path / "float.onnx").write_bytes(r.float_model.SerializeToString())
    lowbit.quantize(tmp_path / "float.onnx", "int8", plan=tmp_path / "plan.json", output=tmp_path / "b.onnx",
                    verify=None)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_four_bit_weights_stay_four_bit_in_the_file_and_run_on_integer_kernels(small_model_path, calib_arrays,
                                                                               eval_arrays):
    cfg = lowbit.QuantConfig(objective="size", weights=lowbit.Scheme(lowbit.int4, lowbit.PerChannel(0),
                                                                     symmetric=True))
    r = lowbit.quantize(small_model_path, cfg, calib_arrays, eval_data=eval_arrays, verify=NO_LATENCY)
    stored = [t for t in r.model.graph.initializer if t.name.endswith(INTEGERS) and len(t.dims) > 1]
    assert stored and all(t.data_type == onnx.TensorProto.INT4 for t in stored)
    kernels = r.report.variants[1]["kernels"]
    assert kernels["unfused"] == [] and kernels["float_kernels"] <= 1, kernels
    assert r.report.variants[1]["parity"]["passed"]


def test_four_bit_weights_raise_the_opset_with_the_version_converter():
    """int4 needs opset 21; ReduceMean's axes moved from attribute to input at 18, so a bare version
    bump would give a model ONNX Runtime refuses."""
    class MeanPool(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.head = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    torch.manual_seed(0)
    module = MeanPool().eval()
    data = [np.random.default_rng(i).random((1, 3, 16, 16), np.float32) for i in range(8)]
    cfg = lowbit.QuantConfig(objective="size", weights=lowbit.Scheme(lowbit.int4, lowbit.PerChannel(0),
                                                                     symmetric=True))
    r = lowbit.quantize(module, cfg, data, example_inputs=torch.zeros(1, 3, 16, 16), eval_data=data,
                        verify=NO_LATENCY)
    assert "ReduceMean" in op_counts(r.model)
    assert max(i.version for i in r.model.opset_import if i.domain in ("", "ai.onnx")) == 21
    assert r.report.variants[1]["parity"]["passed"]


def test_int8_dynamic_stores_conv_weights_in_int8(small_model_path, eval_arrays):
    """Convs keep FP32 arithmetic (ORT's dynamic Conv is slow) on INT8-stored weights: a CNN gets
    INT8's size without calibration data, at float fidelity."""
    r = lowbit.quantize(small_model_path, "int8-dynamic", eval_data=eval_arrays, verify=NO_LATENCY)
    convs = [n for n in r.plan.nodes.values() if n.op == "Conv"]
    assert convs and all(n.precision == "w8" and "float arithmetic" in n.reason for n in convs)
    def weight_bytes(m: onnx.ModelProto) -> int:  # the tiny model's file is mostly the plan record
        return sum(len(t.raw_data) for t in m.graph.initializer)

    assert weight_bytes(r.model) < 0.4 * weight_bytes(onnx.load(str(small_model_path)))
    assert r.report.variants[1]["fidelity"]["sqnr_db"] > 30


def test_int8_dynamic_keeps_the_first_layers_fp32():
    """As the fp16 preset does: INT8-stored weights in a network's first layers (here 0.3% of its
    weights) cost MobileNetV2 9 points of top-1 agreement (0.907 -> 0.990 without them)."""

    from conftest import TinyStem

    torch.manual_seed(0)
    r = lowbit.quantize(TinyStem().eval(), "int8-dynamic", example_inputs=torch.zeros(1, 3, 16, 16), verify=None)
    stem, body = (next(n for n in r.plan.nodes.values() if n.name.startswith(f"/{k}/")) for k in ("stem", "body"))
    assert stem.precision == "fp32" and "first layers" in stem.reason
    assert body.precision == "w8"
