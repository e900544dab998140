"""The fidelity guard (lowbit.emit.fidelity_guard): a static INT8 model that lost its output's
signal on calibration data ships in its weight-only form, and only then."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.core.fidelity import sqnr
from lowbit.emit.fidelity_guard import DECISION_FLOOR, FLOOR_DB, FidelityCheck
from lowbit.presets import preset

# the int8 recipe without this CPU's timings (layers kept FP32 for speed, the whole-model speed
# fallback) and on VNNI's 8-bit weight grid: the same plan on every CPU
PINNED = preset("int8").with_(objective="size", target="vnni")


def test_weight_only_ships_only_under_the_floor_and_by_the_margin():
    assert not FidelityCheck(FLOOR_DB + 0.1, 16, "all values pooled", weight_only_sqnr_db=40.0).weight_only_wins
    assert FidelityCheck(FLOOR_DB - 0.1, 16, "all values pooled", weight_only_sqnr_db=FLOOR_DB + 6.0).weight_only_wins
    assert not FidelityCheck(3.0, 16, "all values pooled", weight_only_sqnr_db=8.0).weight_only_wins  # not 6 dB closer
    assert not FidelityCheck(3.0, 16, "all values pooled").weight_only_wins  # not measured
    d = FidelityCheck(3.0, 16, "all values pooled", weight_only_sqnr_db=30.0).to_dict()
    assert d["shipped"] == "weight-only" and d["qdq_sqnr_db"] == 3.0


def _two_convs(path, rng):
    """x (N, 8, 8, 8) -> Conv 3x3 (8 -> 96) -> Relu -> Conv 3x3 (96 -> 96): ~400 KB of weights."""
    w1 = rng.normal(0, 0.2, (96, 8, 3, 3)).astype(np.float32)
    w1[:, 0] = 0.0  # input channel 0 is read by nothing
    w2 = rng.normal(0, 0.05, (96, 96, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "two_convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 96, 8, 8])],
                              initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _outputs(fp32_path, model, x):
    """(FP32's output, `model`'s) on x."""
    ref = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return ref, got


def _sqnr_vs_fp32(fp32_path, model, x):
    return sqnr(*_outputs(fp32_path, model, x))


def _loud_unread_channel(rng, n, level):
    """n inputs (N, 8, 8, 8) whose channel 0, which no weight reads, holds `level`: it alone sets
    the input's per-tensor 8-bit grid."""
    x = rng.normal(size=(n, 8, 8, 8)).astype(np.float32)
    x[:, 0] = level
    return x


def test_a_static_model_that_lost_its_signal_ships_weight_only(tmp_path):
    """An input channel that nothing reads holds values 10^4 times the others: one per-tensor 8-bit
    grid for the input rounds every channel that matters to zero (static INT8 keeps ~0 dB); INT8
    weights alone keep the output. The guard measures both and ships the weight-only form."""
    rng = np.random.default_rng(0)
    path = _two_convs(tmp_path / "m.onnx", rng)
    r = lowbit.quantize(str(path), PINNED, _loud_unread_channel(rng, 32, 1e4), verify=None)
    check = r.report.data["fidelity_check"]
    assert check["qdq_sqnr_db"] < FLOOR_DB and check["weight_only_sqnr_db"] > 30, check
    assert check["shipped"] == "weight-only"
    assert {n.precision for n in r.plan.nodes.values() if n.op == "Conv"} == {"w8"}
    assert any("INT8 weights alone keep" in note for note in r.report.data["notes"])
    assert _sqnr_vs_fp32(path, r.model, _loud_unread_channel(rng, 8, 1e4)) > 30


def test_a_static_model_that_keeps_its_signal_ships_as_is(tmp_path):
    rng = np.random.default_rng(1)
    path = _two_convs(tmp_path / "m.onnx", rng)
    calib = rng.normal(size=(32, 8, 8, 8)).astype(np.float32)
    r = lowbit.quantize(str(path), PINNED, calib, verify=None)
    check = r.report.data["fidelity_check"]
    assert check["qdq_sqnr_db"] > FLOOR_DB and check["weight_only_sqnr_db"] is None and check["shipped"] == "static INT8"
    assert {n.precision for n in r.plan.nodes.values() if n.op == "Conv"} == {"int8"}
    assert check["qdq_sqnr_db"] == pytest.approx(_sqnr_vs_fp32(path, r.model, calib[:16]), abs=0.5)


def test_a_carried_state_is_not_a_task_output(tmp_path):
    """Outputs that stateful data carries back as the next call's state are left out of the guard's
    measure (their error shows in the next call's outputs); every output counts otherwise."""
    from lowbit.data import as_feeds
    from lowbit.data.spec import specs_from_onnx
    from lowbit.emit.fidelity_guard import OutputFidelity

    rng = np.random.default_rng(2)
    path = _two_convs(tmp_path / "m.onnx", rng)
    model = onnx.load(path)
    pooled = helper.make_node("GlobalAveragePool", ["r1"], ["state"], name="pool")
    model.graph.node.append(pooled)
    model.graph.output.append(helper.make_tensor_value_info("state", TensorProto.FLOAT, ["N", 96, 1, 1]))
    calib = as_feeds(rng.normal(size=(8, 8, 8, 8)).astype(np.float32), specs_from_onnx(model), batch_size=4)
    both = OutputFidelity(model, calib)
    assert both.outputs == ["y", "state"] and both.measure.description.startswith("2 outputs")
    task = OutputFidelity(model, calib, states=["state"])
    assert task.outputs == ["y"] and task.measure.description == "all values pooled"
    assert task.check(model).qdq_sqnr_db == np.inf  # FP32 against itself


def test_the_weight_only_form_is_gptq_rounded_and_reapplies_only_to_its_float_model(tmp_path):
    from lowbit.errors import ConfigError

    rng = np.random.default_rng(3)
    path = _two_convs(tmp_path / "m.onnx", rng)
    r = lowbit.quantize(str(path), PINNED, _loud_unread_channel(rng, 32, 1e4), verify=None)
    assert r.plan.decisions.algorithm_choices["weight-only-gptq"]["layers"] == 2
    assert any("rounded by GPTQ" in note for note in r.report.data["notes"])
    with pytest.raises(ConfigError, match="GPTQ rounding of the weight-only form"):
        lowbit.quantize(str(path), "int8", plan=r.plan, verify=None)
    again = lowbit.quantize(r.float_model, "int8", plan=r.plan, verify=None)
    assert again.model.SerializeToString() == r.model.SerializeToString()


def test_decisions_lost_under_the_floor_ship_weight_only_when_it_halves_the_loss():
    def check(kept, wo_kept, wo_db=30.0):
        return FidelityCheck(20.0, 64, "all values pooled", weight_only_sqnr_db=wo_db, decisions_kept=kept,
                             weight_only_decisions_kept=wo_kept)
    assert check(0.56, 0.94).weight_only_wins  # 44% of samples changed -> 6%
    assert not check(0.56, 0.70).weight_only_wins  # 30% changed: not half of 44%
    assert not check(DECISION_FLOOR, 1.0).weight_only_wins  # static keeps enough
    assert not check(0.56, 0.94, wo_db=15.0).weight_only_wins  # further from FP32's values
    assert not FidelityCheck(20.0, 64, "all values pooled", weight_only_sqnr_db=40.0).needs_weight_only  # no decisions
    assert check(0.56, 0.94).to_dict()["shipped"] == "weight-only"


def _classifier(path, rng):
    """_two_convs, then spatial mean, a low temperature and Softmax over the 96 classes: probabilities
    near 1/96 each, whose argmax small logit errors change."""
    model = onnx.load(_two_convs(path, rng))
    model.graph.output.pop()
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.05, np.float32), "temperature"))
    model.graph.node.extend([
        helper.make_node("ReduceMean", ["y"], ["logits"], name="mean", axes=[2, 3], keepdims=0),
        helper.make_node("Mul", ["logits", "temperature"], ["cooled"], name="cool"),
        helper.make_node("Softmax", ["cooled"], ["p"], name="softmax", axis=-1)])
    model.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 96]))
    onnx.save(model, path)
    return path


def test_a_static_model_that_changed_decisions_ships_weight_only(tmp_path):
    """Near-uniform probabilities keep their values (SQNR above the floor) while the argmax of most
    samples changes under static INT8 (an input channel nothing reads sets the input's grid); INT8
    weights alone keep the decisions. The guard counts decisions and ships the weight-only form."""
    rng = np.random.default_rng(4)
    path = _classifier(tmp_path / "m.onnx", rng)
    r = lowbit.quantize(str(path), PINNED, _loud_unread_channel(rng, 64, 1e3), verify=None)
    check = r.report.data["fidelity_check"]
    assert check["qdq_sqnr_db"] > FLOOR_DB and check["decisions_kept"] < DECISION_FLOOR, check
    assert check["weight_only_decisions_kept"] >= DECISION_FLOOR and check["shipped"] == "weight-only", check
    assert check["samples"] == 16 and check["decision_samples"] == 64  # full outputs kept for 16 batches only
    assert any("kept every decision of FP32" in note for note in r.report.data["notes"])
    ref, got = _outputs(path, r.model, _loud_unread_channel(rng, 32, 1e3))
    assert np.mean(ref.argmax(-1) == got.argmax(-1)) >= 0.9
