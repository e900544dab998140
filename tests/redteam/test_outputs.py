"""Issue 15, part 1: lowbit never replaces what is not its own. Every output is checked before any
work (distinct from the others and from every input, no device, FIFO or /proc link), written
only when everything that can fail has succeeded, through a symlink to a regular file, with the
mode the umask gives (a replaced file keeps its own)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from redteam_util import assert_clean_failure, assert_unchanged, file_state, run_cli, snapshot, temp_files  # noqa: E402

FAST = ("--precision", "int8-fast", "--no-verify")
VERIFY = ("--precision", "int8-fast", "--threads", "1", "--latency-runs", "2")
PREVIOUS = b"a good output from an earlier run"


@pytest.fixture
def work(tmp_path, small_model_path, calib_arrays, eval_arrays) -> Path:
    """m.onnx, calib.npy, eval.npy, and earlier outputs out.onnx / plan.json / report.json (mode 0640)."""
    shutil.copy(small_model_path, tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", np.stack(calib_arrays))
    np.save(tmp_path / "eval.npy", np.stack(eval_arrays))
    for name in ("out.onnx", "plan.json", "report.json", "report.html"):
        (tmp_path / name).write_bytes(PREVIOUS)
        os.chmod(tmp_path / name, 0o640)
    return tmp_path


def _refused(work: Path, *args, pattern: str, rc: int = 2):
    """Run lowbit; it must fail cleanly and leave every file in `work` exactly as it was."""
    before = snapshot(work)
    run = run_cli(*args, cwd=work)
    assert_clean_failure(run, pattern, rc)
    assert_unchanged(before)
    assert set(snapshot(work)) == set(before), "a file appeared"
    assert not temp_files(work)
    return run


# --- outputs that are inputs, or each other ------------------------------------------------------
def test_output_onto_the_input_model_is_refused(work):
    _refused(work, "quantize", "m.onnx", "-o", "m.onnx", "--calib", "calib.npy", *FAST, pattern=r"never overwrites")


def test_output_onto_a_hard_link_of_the_input_is_refused(work):
    os.link(work / "m.onnx", work / "alias.onnx")
    _refused(work, "quantize", "m.onnx", "-o", "alias.onnx", "--calib", "calib.npy", *FAST, pattern=r"input model")


def test_report_onto_the_input_model_is_refused(work):
    _refused(work, "quantize", "m.onnx", "-o", "new.onnx", "--calib", "calib.npy", "--report-json", "m.onnx", *FAST,
             pattern=r"--report-json.*never overwrites")


def test_two_outputs_on_one_path_are_refused(work):
    run = _refused(work, "quantize", "m.onnx", "-o", "X", "--save-plan", "X", "--calib", "calib.npy", *FAST,
                   pattern=r"same file")
    assert "wrote" not in run.text


def test_output_onto_calibration_data_is_refused(work):
    _refused(work, "quantize", "m.onnx", "-o", "new.onnx", "--save-float-model", "calib.npy", "--calib", "calib.npy",
             *FAST, pattern=r"--calib")


def test_output_onto_the_models_external_data_is_refused(work):
    model = onnx.load(work / "m.onnx")
    onnx.save_model(model, work / "ext.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    _refused(work, "quantize", "ext.onnx", "-o", "weights.bin", "--calib", "calib.npy", *FAST,
             pattern=r"external data")


@pytest.mark.parametrize("command", ["eval", "analyze", "bench", "qat"])
def test_every_command_refuses_an_output_onto_its_input(work, command):
    args = {"eval": ("eval", "m.onnx", "out.onnx", "--data", "eval.npy", "--report-json", "out.onnx"),
            "analyze": ("analyze", "m.onnx", "--calib", "calib.npy", "--eval", "eval.npy", "--report-html", "m.onnx"),
            "bench": ("bench", "m.onnx", "--json", "m.onnx"),
            "qat": ("qat", "m.onnx", "--train", "calib.npy", "--eval", "eval.npy", "-o", "calib.npy")}[command]
    _refused(work, *args, pattern=r"never overwrites")


def test_demo_out_onto_a_file_is_refused(work):
    _refused(work, "demo", "--out", "out.onnx", pattern=r"not a folder")


# --- devices, FIFOs and symlinks -----------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_output_onto_a_device_node_is_refused(work):
    os.mknod(work / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    _refused(work, "quantize", "m.onnx", "-o", "null", "--calib", "calib.npy", *FAST, pattern=r"character device")


def test_output_onto_a_fifo_is_refused(work):
    os.mkfifo(work / "pipe")
    _refused(work, "quantize", "m.onnx", "-o", "pipe", "--calib", "calib.npy", *FAST, pattern=r"FIFO")


@pytest.mark.parametrize("link_to", ["/proc/self/fd/1", "/dev/stdout", "/dev/null"])
def test_output_symlink_into_proc_or_dev_is_refused(work, link_to):
    os.symlink(link_to, work / "link.onnx")
    _refused(work, "quantize", "m.onnx", "-o", "link.onnx", "--calib", "calib.npy", *FAST, pattern=r"/proc or /dev")


def test_dangling_output_symlink_is_refused(work):
    os.symlink(work / "missing" / "x.onnx", work / "link.onnx")
    _refused(work, "quantize", "m.onnx", "-o", "link.onnx", "--calib", "calib.npy", *FAST, pattern=r"does not exist")


def test_output_symlink_to_a_file_is_written_through(work):
    os.symlink("out.onnx", work / "link.onnx")
    before = snapshot(work / "m.onnx", work / "calib.npy", work / "link.onnx")
    run = run_cli("quantize", "m.onnx", "-o", "link.onnx", "--calib", "calib.npy", *FAST, cwd=work)
    assert_clean_failure(run, r"wrote link\.onnx", rc=0)
    assert_unchanged(before)  # the link itself stays a link to out.onnx
    target = file_state(work / "out.onnx")
    assert target.kind == "file" and target.mode == 0o640  # replaced in place, its mode kept
    onnx.checker.check_model(onnx.load(work / "out.onnx"))
    assert not temp_files(work)


# --- a failed run replaces nothing ----------------------------------------------------------------
def _nan_eval(work: Path) -> str:
    x = np.load(work / "eval.npy")
    x[3, 0, 0, 0] = np.nan
    np.save(work / "nan.npy", x)
    return "nan.npy"


def _bad_eval(work: Path) -> str:
    np.save(work / "bad.npy", np.zeros((4, 3, 7, 7), np.float32))
    return "bad.npy"


@pytest.mark.parametrize("case", ["nan_eval", "bad_eval", "plan_missing_folder", "html_missing_folder"])
def test_failed_quantize_leaves_earlier_outputs_identical(work, case):
    outs = ("-o", "out.onnx", "--save-plan", "plan.json", "--report-json", "report.json")
    if case == "nan_eval":
        args = (*outs, "--eval", _nan_eval(work), *VERIFY)
    elif case == "bad_eval":
        args = (*outs, "--eval", _bad_eval(work), *VERIFY)
    elif case == "plan_missing_folder":
        args = ("-o", "out.onnx", "--save-plan", "nope/plan.json", "--report-json", "report.json", *FAST)
    else:
        args = (*outs, "--report-html", "nope/r.html", *FAST)
    _refused(work, "quantize", "m.onnx", "--calib", "calib.npy", *args, pattern=r"lowbit error")


def test_failed_qat_leaves_earlier_outputs_identical(work):
    _refused(work, "qat", "m.onnx", "--train", "calib.npy", "--eval", "eval.npy", "-o", "out.onnx",
             "--threads", "x", pattern=r"--threads")


def test_api_quantize_writes_only_after_verification(work):
    import lowbit
    from lowbit.errors import DataError, OutputError

    before = snapshot(work)
    with pytest.raises(DataError):
        lowbit.quantize(work / "m.onnx", "int8-fast", np.load(work / "calib.npy"), output=work / "out.onnx",
                        eval_data=np.load(work / _nan_eval(work)),
                        verify=lowbit.VerifyOptions(threads=(), parity_batches=1))
    assert_unchanged(before)
    with pytest.raises(OutputError, match="never overwrites"):
        lowbit.quantize(work / "m.onnx", "fp16", output=work / "m.onnx", verify=None)
    assert_unchanged(before)
    assert not temp_files(work)


# --- modes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_new_outputs_get_the_umask_mode(work, mask):
    old = os.umask(mask)
    try:
        run = run_cli("quantize", "m.onnx", "-o", "new.onnx", "--save-plan", "new.json", "--calib", "calib.npy", *FAST,
                      cwd=work)
    finally:
        os.umask(old)
    assert_clean_failure(run, rc=0)
    for name in ("new.onnx", "new.json"):
        assert file_state(work / name).mode == 0o666 & ~mask, name
    assert file_state(work / "out.onnx").content == PREVIOUS  # untouched: not an output of this run


def test_replaced_output_keeps_its_mode(work):
    os.chmod(work / "out.onnx", 0o600)
    run = run_cli("quantize", "m.onnx", "-o", "out.onnx", "--calib", "calib.npy", *FAST, cwd=work)
    assert_clean_failure(run, rc=0)
    state = file_state(work / "out.onnx")
    assert state.mode == 0o600 and state.content != PREVIOUS


@pytest.mark.parametrize("demo", ["mobilenet", "doorbell"])
def test_failed_demo_leaves_an_earlier_runs_files_identical(tmp_path, monkeypatch, demo):
    """A demo writes its models and reports together at the end: one that fails part-way (here
    its first quantization) leaves the files of an earlier run as they were."""
    import importlib

    from lowbit.errors import DataError

    module = importlib.import_module(f"lowbit.demo.{demo}")
    out = tmp_path / "demo"
    out.mkdir()
    for name in ("mobilenet_v2.fp32.onnx", "face_descriptor.fp32.onnx", "report.json", "report.html"):
        (out / name).write_bytes(b"an earlier run's " + name.encode())
    before = snapshot(out)

    def fail(*a, **k):
        raise DataError("stop here")

    monkeypatch.setattr(module, "quantize", fail)
    if demo == "doorbell":  # the face data is not needed to get this far
        from lowbit.demo.zoo.face_set import FaceSet

        monkeypatch.setattr(module, "face_set", lambda: FaceSet(
            np.zeros((4, 150, 150, 3), np.uint8), ["a#0", "b#0", "c#0", "d#0"], ["photo"] * 4, list("abcd"),
            np.array([False, False, True, True]), np.zeros((4, 128), np.float32), []))
    run = module.run_doorbell if demo == "doorbell" else module.run_demo
    try:
        with pytest.raises(DataError, match="stop here"):
            run(out, calib_n=2, eval_n=2) if demo == "mobilenet" else run(out)
    except Exception as e:  # the real weights are installed by scripts/setup.sh
        if "setup" in str(e):
            pytest.skip(str(e))
        raise
    assert_unchanged(before)
    assert not temp_files(out)
