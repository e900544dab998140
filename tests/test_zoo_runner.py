"""The zoo runner's measurements: speed-up with a 95% interval and a 'slower' flag only when the
whole interval is below 1; the dominant quantization stage is a leaf of the report's stages."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.zoo import run  # noqa: E402


def _conv(path: Path, channels: int) -> Path:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(channels, 3, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 32, 32])], [w])
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_speedup_has_an_interval_and_slower_needs_all_of_it_below_one(tmp_path):
    small, big = _conv(tmp_path / "small.onnx", 8), _conv(tmp_path / "big.onnx", 256)
    feeds = {"x": np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32)}
    same = run.latency(small, small, feeds, budget_s=1.0, blocks=3)  # more rounds: a shared CPU makes short runs noisy
    assert same["speedup_ci"][0] <= same["speedup"] <= same["speedup_ci"][1] and not same["slower"]
    assert same["latency_rounds"] >= run.MIN_ROUNDS
    slow = run.latency(small, big, feeds, budget_s=0.3, blocks=2)  # 32x the work
    assert slow["speedup_ci"][1] < 1.0 and slow["slower"]


def test_dominant_stage_is_the_longest_leaf():
    stages = {"load+prepare": 1.0, "plan:calibrate": 8.0, "plan:keep-if-better:gptq": 20.0,
              "plan:keep-if-better:bias_correction": 12.0, "plan:keep-if-better": 35.0, "calibrate+plan": 60.0,
              "emit": 0.5, "total_quantize": 62.0}
    assert run.dominant_stage(stages) == ("plan:keep-if-better:gptq", 20.0)
    assert run.dominant_stage({"emit": 0.2, "total_quantize": 0.3}) == ("emit", 0.2)


def test_results_name_the_machine_and_the_int8_stages():
    rec = {"model": "magika", "config": "int8", "rc": 0, "wall_s": 30.0, "traceback": False, "machine": "cpu X",
           "size_pct": 26.5, "speedup": 1.9, "speedup_ci": [1.8, 2.0], "slower": False, "metric": 0.95,
           "stages": {"plan:calibrate": 4.0, "emit": 0.1, "total_quantize": 29.0}}
    text = run.render([rec, {**rec, "config": "fp16", "speedup": 0.9, "speedup_ci": [0.85, 0.95], "slower": True}])
    assert "Machine: cpu X" in text and "1.90 [1.80, 2.00]" in text and "0.90 [0.85, 0.95] SLOWER" in text
    assert "| magika | 29.0 | - | plan:calibrate | 4.0 |" in text


def test_thread_clock_is_for_one_thread_only(tmp_path):
    import pytest

    from lowbit.verify.latency import measure_latency

    model = _conv(tmp_path / "m.onnx", 8).read_bytes()
    feeds = {"x": np.zeros((1, 3, 32, 32), np.float32)}
    with pytest.raises(ValueError, match="1-thread"):
        measure_latency({"m": model}, feeds, threads=(1, 2), runs=2, clock="thread")
    with pytest.raises(ValueError, match="clock must be"):
        measure_latency({"m": model}, feeds, threads=(1,), runs=2, clock="cpu")
    t = measure_latency({"m": model}, feeds, threads=(1,), runs=5, clock="thread")["m"]["1"]
    assert 0 < t["median"] < 1000


def test_text_lines_are_legible_even_on_busy_photos():
    """The recognizer's lines must be readable (WCAG large-text contrast against nearly all of the
    background), or agreement with FP32 measures noise on lines FP32 itself cannot read."""
    from PIL import Image

    from benchmarks.zoo import data as zdata

    rng = np.random.default_rng(0)
    stripes = np.zeros((40, 200, 3), np.uint8)
    stripes[:, ::8] = 255  # half black, half white: no ink reaches 3:1 against both
    for bg in (Image.fromarray(stripes), Image.fromarray(rng.integers(0, 256, (40, 200, 3), dtype=np.uint8))):
        before = np.asarray(bg)
        flat, ink = zdata._legible(np.random.default_rng(1), bg)
        dark = before.mean() > 110  # dark ink on a light background, light ink on a dark one
        assert zdata._contrast(ink, np.asarray(flat).astype(np.float64), dark) >= zdata.MIN_CONTRAST
        assert zdata._contrast(ink, before.astype(np.float64), dark) < zdata.MIN_CONTRAST  # it had to be flattened
    plain = Image.new("RGB", (200, 40), (235, 230, 220))
    flat, ink = zdata._legible(np.random.default_rng(2), plain)
    assert np.array_equal(np.asarray(flat), np.asarray(plain)) and max(ink) <= 130  # paper keeps dark ink, untouched
    assert zdata._contrast(ink, np.asarray(flat).astype(float), True) >= zdata.MIN_CONTRAST
