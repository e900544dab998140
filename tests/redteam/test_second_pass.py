"""A second red-team pass, with hostile inputs of the same kinds as the first: each gets a clean
exit (2, or 0 where the input is fine), no traceback, and leaves every file as it was."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import lowbit
from lowbit.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from redteam_util import assert_clean_failure, assert_unchanged, run_cli, snapshot, temp_files  # noqa: E402


@pytest.fixture
def work(tmp_path, small_model_path, calib_arrays) -> Path:
    (tmp_path / "m.onnx").write_bytes(small_model_path.read_bytes())
    np.save(tmp_path / "calib.npy", np.stack(calib_arrays[:8]))
    return tmp_path


@pytest.mark.parametrize("flag,value,pattern", [
    ("--latency-runs", "0", r"--latency-runs: must be at least 1"),
    ("--eval-limit", "-1", r"--eval-limit: must be at least 1"),
    ("--calib-limit", "x", r"--calib-limit: expected a whole number"),
    ("-o", "sub/", r"'sub/' names a folder"),
    ("--save-plan", "plans/", r"'plans/' names a folder"),
])
def test_bad_counts_and_folder_outputs(work, flag, value, pattern):
    before = snapshot(work)
    args = ["quantize", "m.onnx", "--precision", "int8-fast", "--calib", "calib.npy", "--threads", "1"]
    args += [flag, value] + (["-o", "out.onnx"] if flag != "-o" else [])
    assert_clean_failure(run_cli(*args, cwd=work), pattern)
    assert_unchanged(before)
    assert not (work / "sub").exists() and not temp_files(work)


def test_report_through_a_symlink_to_the_input_is_refused(work):
    os.symlink("m.onnx", work / "link.html")
    before = snapshot(work)
    run = run_cli("quantize", "m.onnx", "--precision", "int8-fast", "--calib", "calib.npy", "-o", "out.onnx",
                  "--report-html", "link.html", "--no-verify", cwd=work)
    assert_clean_failure(run, r"--report-html link\.html is the input model")
    assert_unchanged(before)


def test_device_link_inside_a_calibration_folder_is_skipped_not_read(work, calib_arrays):
    """A folder entry that is not a regular file (here a link to /dev/zero, which never ends) is
    never opened: the run uses the real files and says what it skipped."""
    (work / "cal").mkdir()
    np.save(work / "cal" / "a.npy", np.stack(calib_arrays[:4]))
    os.symlink("/dev/zero", work / "cal" / "b.npy")
    run = run_cli("quantize", "m.onnx", "--precision", "int8-fast", "--calib", "cal", "-o", "out.onnx",
                  "--no-verify", cwd=work, timeout=120)
    assert run.rc == 0 and "Traceback" not in run.text, run.text[-2000:]
    assert "skipped 1 entry that is not a regular file" in run.text
    assert run.peak_rss_mb < 1000


def test_verify_options_are_checked_when_built():
    for bad in (dict(latency_runs=0), dict(parity_batches=-1), dict(eval_limit=0), dict(threads=(0,))):
        with pytest.raises(ConfigError, match="VerifyOptions"):
            lowbit.VerifyOptions(**bad)
    assert lowbit.VerifyOptions(threads=()).threads == ()
