"""The whole-model speed check (issue 16: `int8` is never slower than FP32 at 1 thread): when the
emitted static INT8 model is slower than FP32 beyond noise, the int8 preset ships the weight-only
form of its plan (INT8-stored weights, FP32 arithmetic) instead, and says why.

The decision is tested on fixed timings: whether a model is slower here depends on the CPU, and
speed is measured by the benchmarks (SLANet-plus in the README), not by a timed test."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
import lowbit.stages.emit
from lowbit.api import VerifyOptions
from lowbit.core import sqnr
from lowbit.emit.size_check import TINY_MODEL
from lowbit.onnx.session import session
from lowbit.presets import preset
from lowbit.target.latency_choice import estimate_ratio
from lowbit.target.model_speed import RUNS, WHOLE_MODEL_MARGIN, ModelSpeed, whole_model_speed


def _hardswish_net(channels: int = 64, size: int = 16, blocks: int = 8) -> onnx.ModelProto:
    """MobileNetV3-style blocks (depthwise 3x3 and pointwise convs, each followed by HardSwish as
    HardSigmoid x Mul, the form exporters write): the activation ONNX Runtime fuses into an FP32
    Conv but runs in float between the integer kernels of an INT8 graph."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def conv(x: str, cin: int, cout: int, k: int, group: int, name: str) -> str:
        w = rng.normal(size=(cout, cin // group, k, k)) * np.sqrt(2 / (cin // group * k * k))
        inits.extend([numpy_helper.from_array(w.astype(np.float32), f"{name}.w"),
                      numpy_helper.from_array((rng.normal(size=cout) * 0.1).astype(np.float32), f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name,
                                      group=group, pads=[k // 2] * 4))
        hs = helper.make_node("HardSigmoid", [f"{name}.y"], [f"{name}.hs"], name=f"{name}.hs", alpha=1 / 6, beta=0.5)
        nodes.extend([hs, helper.make_node("Mul", [f"{name}.y", f"{name}.hs"], [f"{name}.out"], name=f"{name}.mul")])
        return f"{name}.out"

    x = conv("x", 3, channels, 3, 1, "stem")
    for i in range(blocks):
        x = conv(conv(x, channels, channels, 3, channels, f"dw{i}"), channels, channels, 1, 1, f"pw{i}")
    g = helper.make_graph(nodes, "hardswish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, size, size])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", channels, size, size])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _timed(ratio: float, runs: int = 20, spread: float = 0.01) -> ModelSpeed:
    """A ModelSpeed of `runs` paired timings whose INT8/FP32 ratios spread evenly around `ratio`."""
    fp32 = np.full(runs, 10.0)
    return ModelSpeed(estimate_ratio(fp32, fp32 * (ratio + np.linspace(-spread, spread, runs))))


@pytest.fixture(scope="module")
def hardswish():
    m = _hardswish_net()
    assert m.ByteSize() >= TINY_MODEL  # models below it are not timed (their time is the runtime's overhead)
    rng = np.random.default_rng(1)
    return m, [rng.normal(size=(4, 3, 16, 16)).astype(np.float32) for _ in range(4)]


def test_clearly_slower_needs_the_spread_above_one_plus_the_margin():
    assert _timed(1.10).clearly_slower
    assert not _timed(1.0).clearly_slower
    assert not _timed(1.0 + WHOLE_MODEL_MARGIN / 2).clearly_slower
    # 8% slower at the median, but a quarter of the runs within 2%: not beyond noise
    assert not _timed(1.08, spread=0.12).clearly_slower
    d = _timed(1.25).to_dict()
    assert d["int8_clearly_slower"] is True and d["threads"] == 1 and d["runs"] == 20
    assert d["ratio_iqr"][0] <= d["int8_fp32_ratio"] <= d["ratio_iqr"][1]


def test_whole_model_speed_times_both_models_in_paired_runs(hardswish):
    m, calib = hardswish
    speed = whole_model_speed(m.SerializeToString(), m.SerializeToString(), {"x": calib[0][:1]})
    e = speed.estimate
    assert RUNS[0] <= e.runs <= RUNS[1]
    assert e.fp32_ms > 0 and e.int8_ms > 0 and e.low <= e.ratio <= e.high
    assert 0 < speed.seconds < 60 and speed.to_dict()["seconds"] == round(speed.seconds, 2)


def test_int8_slower_than_fp32_ships_the_weight_only_plan(hardswish, monkeypatch, tmp_path):
    m, calib = hardswish
    monkeypatch.setattr(lowbit.stages.emit, "whole_model_speed", lambda *a: _timed(1.5))
    r = lowbit.quantize(m, "int8", calib, output=tmp_path / "a.onnx", verify=VerifyOptions(threads=()))
    assert not r.plan.tensors and not any(n.op_type == "QuantizeLinear" for n in r.model.graph.node)
    convs = [n for n in r.plan.nodes.values() if n.op == "Conv"]
    assert convs and all(n.precision == "w8" and "slower than FP32" in n.reason for n in convs)
    # the plan is recorded in the model file: no measured number in it, so the bytes do not vary with noise
    assert not any("1.5" in n.reason for n in r.plan.nodes.values())
    note = next(n for n in r.report.data["notes"] if "weight-only" in n)
    assert "1.50x FP32's time at 1 thread" in note
    assert r.report.data["speed_check"]["int8_clearly_slower"] is True
    assert "speed_check" in r.report.data["quantizer"]["stages"]
    written = (tmp_path / "a.onnx").read_bytes()
    assert len(written) < 0.5 * m.ByteSize()  # the weights are stored INT8 all the same
    x = calib[0]
    assert sqnr(session(m).run(None, {"x": x})[0], session(written).run(None, {"x": x})[0]) > 30
    # re-applied, the plan gives the same bytes without timing anything
    monkeypatch.setattr(lowbit.stages.emit, "whole_model_speed", None)
    r.plan.save(tmp_path / "plan.json")
    (tmp_path / "float.onnx").write_bytes(r.float_model.SerializeToString())
    lowbit.quantize(tmp_path / "float.onnx", "int8", plan=tmp_path / "plan.json", output=tmp_path / "b.onnx",
                    verify=None)
    assert (tmp_path / "b.onnx").read_bytes() == written


def test_int8_within_noise_of_fp32_keeps_integer_kernels(hardswish, monkeypatch):
    m, calib = hardswish
    monkeypatch.setattr(lowbit.stages.emit, "whole_model_speed", lambda *a: _timed(1.01))
    r = lowbit.quantize(m, "int8-fast", calib, verify=None)
    assert r.plan.tensors and any(n.op_type == "QuantizeLinear" for n in r.model.graph.node)
    assert r.report.data["speed_check"]["int8_clearly_slower"] is False
    assert not any("weight-only" in n for n in r.report.data["notes"])


def test_objective_size_keeps_integer_kernels_untimed(hardswish, monkeypatch):
    m, calib = hardswish
    monkeypatch.setattr(lowbit.stages.emit, "whole_model_speed", None)  # called, it would raise
    cfg = dataclasses.replace(preset("int8-fast"), objective="size")
    r = lowbit.quantize(m, cfg, calib, verify=None)
    assert r.plan.tensors and "speed_check" not in r.report.data


def test_four_bit_weights_are_not_timed(hardswish, monkeypatch):
    """The fallback stores weights in 8 bits: a 4-bit plan is chosen for size and keeps its kernels."""
    m, calib = hardswish
    monkeypatch.setattr(lowbit.stages.emit, "whole_model_speed", None)
    cfg = dataclasses.replace(preset("w4a8"), objective="latency", algorithms=())
    r = lowbit.quantize(m, cfg, calib, verify=None)
    assert r.plan.tensors and "speed_check" not in r.report.data


def test_the_file_size_decides_before_any_timing():
    from lowbit.emit.fallback import weight_only_instead

    def never():
        raise AssertionError("timed although the size had decided")

    reason, speed = weight_only_instead(2_000, 1_000, never)
    assert speed is None and "2,000 bytes, not smaller than the input's 1,000" in reason.why
    assert weight_only_instead(500, 1_000, None) == (None, None)
    reason, speed = weight_only_instead(500, 1_000, lambda: _timed(1.01))
    assert reason is None and speed is not None and not speed.clearly_slower
    reason, _ = weight_only_instead(500, 1_000, lambda: _timed(1.3))
    assert "1.30x FP32's time" in reason.why and "1.3" not in reason.node_why


def test_recovery_is_skipped_where_the_weight_only_form_will_ship(hardswish, monkeypatch):
    """Timed before recovery: minutes of training on activations that will not be quantized are
    not spent; a plan that stays INT8 is timed once and recovered as usual."""
    from lowbit.recover import Recover

    m, calib = hardswish
    calls = []

    def timed(ratio):
        def measure(fp32: bytes, int8: bytes, feeds) -> ModelSpeed:
            # both are whole models (verify=None drops the model as given: the float model stands in)
            assert onnx.load_from_string(fp32).graph.node and onnx.load_from_string(int8).graph.node
            calls.append(1)
            return _timed(ratio)
        return measure

    monkeypatch.setattr(lowbit.stages.emit, "whole_model_speed", timed(1.5))
    r = lowbit.quantize(m, "int8", calib * 4, recover=Recover("5steps"), verify=None)
    assert len(calls) == 1 and not r.plan.tensors
    assert any("Recovery skipped" in n for n in r.report.data["notes"])
    assert not any(k.startswith("recover") for k in r.report.data["quantizer"]["stages"])
    calls.clear()
    monkeypatch.setattr(lowbit.stages.emit, "whole_model_speed", timed(1.0))
    r = lowbit.quantize(m, "int8", calib * 4, recover=Recover("5steps"), verify=None)
    assert len(calls) == 1 and r.plan.tensors
    assert any(k.startswith("recover") for k in r.report.data["quantizer"]["stages"])
