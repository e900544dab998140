"""Every preset on every zoo model (real ONNX files as pip packages ship them, a few realistic
inputs each), through the real CLI: exit 0 with an output smaller than the input, or exit 2 with
one paragraph naming what prevents it; never a traceback, never a larger file. The task fidelity
and speed of each are measured by `python -m benchmarks.zoo.run` (benchmarks/zoo/results.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("fp16", "int8", "int8-fast", "int8-transformer", "w4a8", "int8-dynamic")


def _zoo():
    try:
        from benchmarks.zoo.models import ZOO
    except ImportError:  # benchmarks/ is on the path when pytest runs from the repository root
        return {}
    return ZOO


@pytest.fixture(scope="module")
def zoo_cache():
    from benchmarks.zoo import models

    if not (models.cache_dir() / "models").is_dir():
        pytest.skip("zoo models not fetched: run bash scripts/setup_zoo.sh")
    return models


@pytest.mark.parametrize("name", list(_zoo()) or ["(zoo unavailable)"])
def test_every_preset_runs_or_refuses_cleanly(name, zoo_cache, tmp_path):
    from benchmarks.zoo import data as zdata
    from benchmarks.zoo.run import quantize_cmd

    entry = zoo_cache.ZOO[name]
    model = zoo_cache.fetch(name)
    small = zdata.build(entry.data, n_calib=4, n_eval=1)
    zdata.save(small, tmp_path)
    in_bytes = sum(f.stat().st_size for f in model.parent.glob(model.name + "*"))
    results = {}
    for preset in PRESETS:
        out = tmp_path / f"{preset}.onnx"
        cmd = quantize_cmd(preset, model, tmp_path, out, entry.data)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, stdin=subprocess.DEVNULL)
        text = p.stdout + p.stderr
        assert "Traceback (most recent call last)" not in text, (preset, text[-3000:])
        assert p.returncode in (0, 2), (preset, p.returncode, text[-3000:])
        if p.returncode == 2:
            assert "lowbit error" in text and not out.exists(), (preset, text[-2000:])
            results[preset] = "refused: " + text.strip().splitlines()[-1][:200]
            continue
        size = sum(f.stat().st_size for f in tmp_path.glob(f"{preset}.onnx*"))
        assert size < in_bytes, (preset, size, in_bytes)
        results[preset] = f"{100 * size / in_bytes:.1f}%"
    # the headline preset must run on every zoo model as shipped, with no flags beyond the data's
    assert not results["int8"].startswith("refused"), results
    assert not results["fp16"].startswith("refused"), results
