"""The `lowbit` command: quantize, eval, list; errors as one paragraph and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from lowbit.cli.commands import main


@pytest.fixture()
def npy_folders(tmp_path, calib_arrays, eval_arrays):
    calib, ev = tmp_path / "calib", tmp_path / "eval"
    calib.mkdir()
    ev.mkdir()
    for i, a in enumerate(calib_arrays):
        np.save(calib / f"{i:03d}.npy", a)
    for i, a in enumerate(eval_arrays):
        np.save(ev / f"{i:03d}.npy", a)
    return calib, ev


def test_quantize_writes_model_plan_and_reports(small_model_path, npy_folders, tmp_path, capsys):
    calib, ev = npy_folders
    out = tmp_path / "m.int8.onnx"
    code = main(["quantize", str(small_model_path), "--precision", "int8", "--calib", str(calib), "--eval", str(ev),
                 "-o", str(out), "--threads", "1", "--latency-runs", "3", "--save-plan", str(tmp_path / "plan.json"),
                 "--report-html", str(tmp_path / "r.html"), "--report-json", str(tmp_path / "r.json")])
    assert code == 0
    assert onnx.load(str(out)).graph.node
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["variants"][1]["parity"]["passed"]
    assert json.loads((tmp_path / "plan.json").read_text())["schema"] == "lowbit.plan/1"
    assert (tmp_path / "r.html").read_text().lower().startswith("<!doctype html")
    assert "int8" in capsys.readouterr().out


def test_quantize_image_folder_with_preprocessing(small_model_path, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")
    code = main(["quantize", str(small_model_path), "--calib", str(folder), "--preprocess", "resize=32,crop=32",
                 "-o", str(tmp_path / "m.onnx"), "--no-verify"])
    assert code == 0 and (tmp_path / "m.onnx").exists()


def test_eval_compares_candidates(small_model_path, npy_folders, tmp_path, capsys):
    calib, ev = npy_folders
    out = tmp_path / "m.fp16.onnx"
    assert main(["quantize", str(small_model_path), "--precision", "fp16", "-o", str(out), "--no-verify"]) == 0
    capsys.readouterr()
    assert main(["eval", str(small_model_path), str(out), "--data", str(ev), "--threads", "1",
                 "--latency-runs", "2", "--report-json", str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert [v["label"] for v in report["variants"]] == ["fp32", "m.fp16.onnx"]
    assert report["variants"][1]["fidelity"]["sqnr_db"] > 40
    assert "lowbit eval" in capsys.readouterr().out


def test_list_shows_presets_and_calibrations(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "int8" in text and "fp16" in text and "minmax" in text


@pytest.mark.parametrize("argv,pattern", [
    (["quantize", "missing.onnx", "--calib", "x", "-o", "o.onnx"], "not found"),
    (["quantize", "MODEL", "--precision", "int9", "--calib", "x", "-o", "o.onnx"], "Did you mean 'int8'"),
])
def test_errors_are_one_paragraph_without_traceback(argv, pattern, small_model_path, tmp_path):
    argv = [str(small_model_path) if a == "MODEL" else a for a in argv]
    proc = subprocess.run([sys.executable, "-m", "lowbit.cli", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert pattern.split("'")[0] in proc.stderr


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "quantize" in capsys.readouterr().out


def test_bench_predicts_per_layer(small_model_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    assert main(["bench", str(small_model_path), "--json", str(tmp_path / "b.json")]) == 0
    pred = json.loads((tmp_path / "b.json").read_text())
    assert len(pred["layers"]) == 4 and pred["total"]["fp32_ms"] > 0
    assert {l["choice"] for l in pred["layers"]} <= {"int8", "fp32"}
    assert (tmp_path / "cache" / "layer_costs.json").is_file()


@pytest.mark.parametrize("target", ["avx2", "vnni"])
def test_target_flag_pins_the_weight_grid(small_model_path, npy_folders, tmp_path, target):
    """--target reaches the plan, whatever CPU runs the test: on the AVX2 grid the u8 x s8 layers'
    weights are 7-bit ([-63, 63]; depthwise keeps 8 bits), on VNNI's every weight is 8-bit."""
    from lowbit import QuantPlan

    calib, _ = npy_folders
    plan = tmp_path / "plan.json"
    assert main(["quantize", str(small_model_path), "--precision", "int8-fast", "--calib", str(calib),
                 "--target", target, "--objective", "size", "-o", str(tmp_path / "m.onnx"), "--no-verify",
                 "--save-plan", str(plan)]) == 0
    loaded = QuantPlan.load(plan)
    assert loaded.config["target"] == target
    bounds = {t.qparams.dtype.bounds(t.qparams.narrow)[1] for t in loaded.tensors.values() if t.role == "weight"}
    assert bounds == ({63, 127} if target == "avx2" else {127}), bounds
