"""Reliability and security: hostile inputs, killed runs, reproducible outputs, fuzzing."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.cli.commands import main
from lowbit.errors import LowbitError, ModelError

sys.path.insert(0, str(Path(__file__).parent))
from hostile import make_hostile_data, make_hostile_models  # noqa: E402


def _digest(path: Path) -> str:
    if path.is_dir():
        return "".join(_digest(p) for p in sorted(path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory, small_model_path):
    root = tmp_path_factory.mktemp("hostile")
    return make_hostile_models(root / "models", small_model_path), make_hostile_data(root / "data")


def _run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("case", ["external_traversal", "external_absolute", "huge_declared_shape", "cycle",
                                  "dangling_input", "duplicate_names", "unknown_domain", "truncated",
                                  "bit_flips", "text_file"])
def test_hostile_model_is_refused_by_name(case, hostile_dir, tmp_path, capsys):
    path, pattern = hostile_dir[0][case]
    before = _digest(path)
    out = tmp_path / "out.onnx"
    code, text = _run_cli(["quantize", str(path), "--precision", "fp16", "-o", str(out), "--no-verify"], capsys)
    assert code == 2, text
    assert "Traceback" not in text
    import re

    assert re.search(pattern, " ".join(text.split())), text
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    assert _digest(path) == before


@pytest.mark.parametrize("case", ["nan", "wrong_dtype", "zero_size", "truncated_npy", "wrong_layout", "corrupt_image"])
def test_hostile_data_is_refused_by_name(case, hostile_dir, small_model_path, tmp_path, capsys):
    path, pattern = hostile_dir[1][case]
    before = _digest(path)
    out = tmp_path / "out.onnx"
    argv = ["quantize", str(small_model_path), "--calib", str(path), "-o", str(out), "--no-verify"]
    if path.is_dir():
        argv += ["--preprocess", "resize=32,crop=32"]
    code, text = _run_cli(argv, capsys)
    import re

    assert code == 2, text
    assert "Traceback" not in text and re.search(pattern, " ".join(text.split())), text
    assert not out.exists()
    assert _digest(path) == before


QUANTIZE_SCRIPT = """
import sys, numpy as np
from lowbit.cli.commands import main
sys.exit(main(["quantize", sys.argv[1], "--calib", sys.argv[2], "-o", sys.argv[3], "--no-verify"]))
"""


@pytest.mark.parametrize("seed", range(4))
def test_killed_quantize_never_leaves_partial_output(seed, small_model_path, calib_arrays, tmp_path):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.stack(calib_arrays))
    reference = tmp_path / "reference.onnx"
    assert main(["quantize", str(small_model_path), "--calib", str(calib), "-o", str(reference), "--no-verify"]) == 0
    out = tmp_path / "out.onnx"
    rng = random.Random(seed)
    sig = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL][seed % 3]
    proc = subprocess.Popen([sys.executable, "-c", QUANTIZE_SCRIPT, str(small_model_path), str(calib), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.5, 4.0))
    proc.send_signal(sig)
    proc.wait(timeout=60)
    if out.exists():  # it finished before the signal: the file must be complete
        assert out.read_bytes() == reference.read_bytes()
    if sig != signal.SIGKILL:
        assert not list(tmp_path.glob(".*.tmp"))
    # a later run beside the same path cleans up whatever a hard kill left behind
    assert main(["quantize", str(small_model_path), "--calib", str(calib), "-o", str(out), "--no-verify"]) == 0
    assert not list(tmp_path.glob(".*.tmp"))
    assert out.read_bytes() == reference.read_bytes()


def test_shard_merged_calibration_gives_identical_plan_and_model(small_model_path, calib_arrays):
    from lowbit.api import make_plan
    from lowbit.data import as_feeds
    from lowbit.emit import emit_qdq
    from lowbit.load.model import load_model
    from lowbit.calibration.collect import collect_stats
    from lowbit.plan.planner import build_plan
    from lowbit.load.prepare import prepare
    from lowbit.plan.selection import select

    prepared = prepare(load_model(small_model_path))
    config = lowbit.QuantConfig(objective="size")
    _, single = make_plan(prepared, config, as_feeds(calib_arrays, prepared.inputs))
    sel = select(prepared.proto, config)
    method = config.activations.calibration
    shards = [collect_stats(prepared.proto, sel.to_observe, as_feeds(part, prepared.inputs), lambda n: method)
              for part in (calib_arrays[:7], calib_arrays[7:15], calib_arrays[15:])]
    merged = shards[2].merge(shards[0]).merge(shards[1])
    plan = build_plan(prepared.proto, sel, merged, config)
    plan.model_fingerprint = single.model_fingerprint
    assert plan.to_json() == single.to_json()
    assert emit_qdq(prepared.proto, plan).SerializeToString() == emit_qdq(prepared.proto, single).SerializeToString()


def test_report_records_versions(small_model_path, calib_arrays):
    r = lowbit.quantize(small_model_path, "int8", calib_arrays, verify=None)
    assert set(r.report.data["versions"]) >= {"lowbit", "onnx", "onnxruntime", "torch", "numpy"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_models_fail_cleanly(small_model_path, tmp_path, data):
    """Truncations and bit flips anywhere: a ModelError, or a model that loads — never a crash."""
    raw = bytearray(small_model_path.read_bytes())
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 20))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
    path = tmp_path / "mutated.onnx"
    path.write_bytes(bytes(raw))
    try:
        from lowbit.load.model import load_model
        from lowbit.load.prepare import prepare

        prepare(load_model(path))
    except LowbitError:
        pass


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed (x86_64 test extra)")
def test_atheris_fuzz_of_the_loader_finds_no_crash(small_model_path, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "seed.onnx").write_bytes(small_model_path.read_bytes())
    target = Path(__file__).parent / "fuzz_loader.py"
    proc = subprocess.run([sys.executable, str(target), str(corpus), "-max_total_time=15", "-rss_limit_mb=4096",
                           "-timeout=20", f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True,
                          timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_skip_bad_counts_skipped_samples_in_the_report(small_model_path, calib_arrays, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, a in enumerate(calib_arrays[:6]):
        np.save(folder / f"{i}.npy", a)
    (folder / "7.npy").write_bytes(b"not an array")
    bad = calib_arrays[0].copy()
    bad[0, 0, 0] = np.nan
    np.save(folder / "8.npy", bad)
    r = lowbit.quantize(small_model_path, "int8-fast", folder, skip_bad=True, verify=None)
    skipped = r.report.data["skipped_samples"]["calibration"]
    assert {Path(s["source"]).name for s in skipped} == {"7.npy", "8.npy"}
    assert any("Skipped 2 bad calibration" in n for n in r.report.data["notes"])
