"""Every zoo model reports its task metric by default: `lowbit quantize` run as a user would, with
evaluation data and no --metric, leads its report with the metric the zoo scores the model by
(detections, maps, CTC strings, decisions, classes), never generic SQNR. fp16 and a few inputs keep
it fast; the values are measured by `python -m benchmarks.zoo.run`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LOWBIT = Path(sys.executable).with_name("lowbit")
STATEFUL = {"vad_stream": ["--stateful", "state->stateN"], "vad_sequence": ["--stateful", "h->hn,c->cn"]}


def _zoo():
    try:
        from benchmarks.zoo.models import ZOO
    except ImportError:
        return {}
    return ZOO


def _eval_data(entry, folder: Path, out: Path, n: int) -> list[str]:
    """The first `n` evaluation calls in a form the CLI reads: one .npz of stacked inputs, or for a
    recurrent model a folder of sequences (one .npz per utterance) and its --stateful pairs."""
    from benchmarks.zoo import data as zdata

    if not (folder / "eval.npz").exists():
        zdata.save(zdata.build(entry.data, n_calib=4, n_eval=n), folder)
    runs = zdata.load_runs(folder / "eval.npz")[:n]
    if entry.data in STATEFUL:
        out.mkdir()
        sr = {"sr": np.array(16000, np.int64)} if entry.data == "vad_stream" else {}
        for i, run in enumerate(runs):
            np.savez(out / f"utt{i:03d}.npz", input=run["input"], **sr)
        return [str(out), *STATEFUL[entry.data]]
    path = out.with_suffix(".npz")
    np.savez(path, **{k: np.concatenate([r[k] for r in runs]) for k in runs[0]})
    return [str(path)]


@pytest.mark.parametrize("name", list(_zoo()) or ["(zoo unavailable)"])
def test_default_headline_is_the_task_metric(name, tmp_path):
    from benchmarks.zoo import models

    if not (models.cache_dir() / "models").is_dir():
        pytest.skip("zoo models not fetched: run bash scripts/setup_zoo.sh")
    entry = models.ZOO[name]
    n = 2 if entry.data in STATEFUL else 6   # utterances hold ~100 steps each
    evaluation = _eval_data(entry, models.cache_dir() / "runs" / name, tmp_path / "eval", n)
    cmd = [str(LOWBIT), "quantize", str(models.fetch(name)), "--preset", "fp16", "--eval", *evaluation,
           "-o", str(tmp_path / "out.onnx"), "--report-json", str(tmp_path / "r.json"),
           "--threads", "1", "--latency-runs", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    head = report["metric"]
    assert head["headline"] == entry.metric and head["source"] == "inferred", head
    metrics = report["variants"][-1]["metrics"]
    assert metrics[0]["name"] == entry.metric and metrics[0]["n"] >= n and metrics[0]["value"] is not None
    if entry.output:  # the output the zoo scores is scored by the same metric (basic-pitch's notes)
        assert any(m["name"] == entry.metric and m["outputs"] == [entry.output] for m in metrics), metrics


def test_eval_scores_onnx_runtimes_own_int8_detector(tmp_path, monkeypatch):
    """`lowbit eval` needs no lowbit-made candidate: YOLOv8n quantized by ONNX Runtime's
    quantize_static and quantize_dynamic, scored by --metric detection-yolo."""
    from benchmarks.zoo import models
    from benchmarks.zoo.data import load_runs, save_runs
    from benchmarks.zoo.peer import main as ort_quantize

    if not (models.cache_dir() / "runs" / "yolov8n-nudenet" / "eval.npz").exists():
        pytest.skip("zoo data not built: run bash scripts/setup_zoo.sh")
    fp32 = models.fetch("yolov8n-nudenet")
    folder = models.cache_dir() / "runs" / "yolov8n-nudenet"
    save_runs(load_runs(folder / "calib_runs.npz")[:2], tmp_path / "calib_runs.npz")
    monkeypatch.chdir(tmp_path)  # ORT's quantizers leave scratch files in the working folder
    for kind in ("static", "dynamic"):
        ort_quantize(kind, str(fp32), str(tmp_path / "calib_runs.npz"), str(tmp_path / f"ort-{kind}.onnx"))
    runs = load_runs(folder / "eval.npz")[:6]
    np.savez(tmp_path / "eval.npz", images=np.concatenate([r["images"] for r in runs]))
    p = subprocess.run([str(LOWBIT), "eval", str(fp32), str(tmp_path / "ort-static.onnx"),
                        str(tmp_path / "ort-dynamic.onnx"), "--data", str(tmp_path / "eval.npz"), "--metric",
                        "detection-yolo", "--threads", "1", "--latency-runs", "2", "--report-json",
                        str(tmp_path / "r.json")], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["metric"]["headline"] == "detection-yolo" and report["metric"]["source"] == "given"
    for v in report["variants"][1:]:
        head = v["metrics"][0]
        assert head["name"] == "detection-yolo" and head["n"] == 6 and 0.0 <= head["value"] <= 1.0, v["label"]
