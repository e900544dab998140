"""Issue 15, part 3: no traceback ever reaches the user. Bad input is a lowbit error (one
paragraph, exit 2) naming what was wrong; a bug is one paragraph with a bug-report hint (exit 1),
its traceback only under -v; and the library raises lowbit errors, never ValueError / KeyError,
for what a user gave it."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).parent))
from redteam_util import TRACEBACK, assert_clean_failure, assert_unchanged, run_cli, snapshot, temp_files  # noqa: E402

from lowbit.errors import ConfigError, DataError, LowbitError, ModelError  # noqa: E402

TESTS = Path(__file__).parent.parent
FAST = ("--precision", "int8-fast", "--no-verify")


@pytest.fixture
def work(tmp_path, small_model_path, calib_arrays, eval_arrays) -> Path:
    shutil.copy(small_model_path, tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", np.stack(calib_arrays))
    np.save(tmp_path / "eval.npy", np.stack(eval_arrays))
    return tmp_path


def _refused(work: Path, *args, pattern: str, env: dict | None = None, timeout: float = 120):
    before = snapshot(work)
    run = run_cli(*args, cwd=work, env=env, timeout=timeout)
    assert_clean_failure(run, pattern)
    assert_unchanged(before)
    assert not temp_files(work) and not (work / "out.onnx").exists()
    return run


# --- external data fields ------------------------------------------------------------------------
def _external(work: Path, edit) -> str:
    """ext.onnx with its weights in weights.bin, then one external-data field edited."""
    onnx.save_model(onnx.load(work / "m.onnx"), work / "ext.onnx", save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    proto = onnx.load(work / "ext.onnx", load_external_data=False)
    t = next(t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL)
    edit(t, {e.key: e for e in t.external_data})
    (work / "ext.onnx").write_bytes(proto.SerializeToString())
    return "ext.onnx"


def _set(key, value):
    def edit(t, fields):
        fields[key].value = value
    return edit


@pytest.mark.parametrize("case, edit, pattern", [
    ("nul_in_location", _set("location", "weights.bin\0x"), r"invalid external data location"),
    ("offset_not_a_number", _set("offset", "12abc"), r"'offset' must be a whole number"),
    ("negative_length", _set("length", "-4"), r"'length' must be 0 or more"),
    ("unknown_data_type", lambda t, f: setattr(t, "data_type", 999), r"unknown element type 999"),
])
def test_bad_external_data_fields_are_model_errors(work, case, edit, pattern):
    model = _external(work, edit)
    _refused(work, "quantize", model, "-o", "out.onnx", "--calib", "calib.npy", *FAST, pattern=pattern)


# --- model paths that are not regular files -----------------------------------------------------
def test_model_symlink_to_dev_zero_is_refused_before_reading(work):
    (work / "zero.onnx").symlink_to("/dev/zero")
    t0 = time.perf_counter()
    run = _refused(work, "quantize", "zero.onnx", "-o", "out.onnx", "--calib", "calib.npy", *FAST,
                   pattern=r"character device.*/dev/zero")
    assert time.perf_counter() - t0 < 30 and run.peak_rss_mb < 1500


def test_model_fifo_is_refused_without_hanging(work):
    import os

    os.mkfifo(work / "pipe.onnx")
    _refused(work, "quantize", "pipe.onnx", "-o", "out.onnx", "--calib", "calib.npy", *FAST, timeout=60,
             pattern=r"FIFO")


@pytest.mark.parametrize("command", ["quantize", "eval", "qat"])
def test_data_fifo_or_device_is_refused_without_hanging(work, command):
    import os

    os.mkfifo(work / "pipe.npy")
    (work / "zero.npy").symlink_to("/dev/zero")
    args = {"quantize": ("quantize", "m.onnx", "-o", "out.onnx", "--calib", "pipe.npy", "--eval", "zero.npy", *FAST),
            "eval": ("eval", "m.onnx", "m.onnx", "--data", "pipe.npy"),
            "qat": ("qat", "m.onnx", "--train", "zero.npy", "--eval", "pipe.npy", "-o", "out.onnx")}[command]
    _refused(work, *args, timeout=60, pattern=r"(FIFO|character device).*not a regular file")


# --- lowbit eval ---------------------------------------------------------------------------------
def test_eval_candidate_with_other_output_shape(work):
    from conftest import SmallConvNet, _init

    from lowbit.load.model import export_torch

    net = _init(SmallConvNet(), 0)
    net.head = torch.nn.Linear(16, 5)
    (work / "five.onnx").write_bytes(export_torch(net, torch.zeros(1, 3, 32, 32)).SerializeToString())
    _refused(work, "eval", "m.onnx", "five.onnx", "--data", "eval.npy", "--threads", "1", "--latency-runs", "2",
             pattern=r"five\.onnx gives outputs of shapes \[\(\d+, 5\)\]")


def test_eval_candidate_onnx_runtime_cannot_load(work):
    proto = onnx.load(work / "m.onnx")
    proto.graph.node[-1].op_type, proto.graph.node[-1].domain = "NoSuchOp", "com.microsoft"
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    (work / "broken.onnx").write_bytes(proto.SerializeToString())
    _refused(work, "eval", "m.onnx", "broken.onnx", "--data", "eval.npy", "--threads", "1",
             pattern=r"broken\.onnx cannot be loaded by ONNX Runtime")


# --- lowbit qat ----------------------------------------------------------------------------------
@pytest.fixture
def labeled(work, calib_arrays) -> Path:
    x = np.stack(calib_arrays)
    np.savez(work / "train.npz", x=x, y=np.arange(len(x)) % 10)
    return work


def test_qat_checkpoint_with_wrong_keys(labeled):
    torch.save({"not_a_layer.weight": torch.zeros(3)}, labeled / "m.pt")
    _refused(labeled, "qat", "m.pt", "--arch", "conftest:SmallConvNet", "--input-shape", "3,32,32", "--train",
             "train.npz", "--eval", "train.npz", "-o", "out.onnx", "--threads", "", env={"PYTHONPATH": str(TESTS)},
             pattern=r"m\.pt does not fit --arch conftest:SmallConvNet.*not_a_layer")


@pytest.mark.parametrize("case, pattern", [
    ("object_array", r"cannot read its arrays"),
    ("corrupt", r"not a readable \.npz"),
    ("float_labels", r"labels integers"),
    ("wrong_sample_shape", r"samples of shape \(3, 7, 7\)"),
    ("label_out_of_range", r"--eval: label 10 is outside the model's 10 classes"),
    ("negative_label", r"--eval: label -1 is outside the model's 10 classes"),
])
def test_qat_bad_npz(labeled, case, pattern):
    bad = labeled / "bad.npz"
    if case == "object_array":
        np.savez(bad, x=np.array([object(), object()], dtype=object), y=np.zeros(2, np.int64))
    elif case == "corrupt":
        bad.write_bytes(b"PK\x03\x04" + b"\x00garbage" * 20)
    elif case == "float_labels":
        np.savez(bad, x=np.zeros((2, 3, 32, 32), np.float32), y=np.array([0.5, 1.5]))
    elif case == "wrong_sample_shape":
        np.savez(bad, x=np.zeros((2, 3, 7, 7), np.float32), y=np.zeros(2, np.int64))
    else:  # labels that index past the model's outputs (10 classes)
        np.savez(bad, x=np.zeros((2, 3, 32, 32), np.float32), y=np.array([0, 10 if "range" in case else -1]))
    _refused(labeled, "qat", "m.onnx", "--train", "train.npz", "--eval", "bad.npz", "-o", "out.onnx",
             "--threads", "", pattern=pattern)


def test_qat_threads_not_a_number(labeled):
    _refused(labeled, "qat", "m.onnx", "--train", "train.npz", "--eval", "train.npz", "-o", "out.onnx",
             "--threads", "x", pattern=r"--threads takes comma-separated integers")


# --- -v and internal errors ----------------------------------------------------------------------
def test_verbose_is_accepted_after_the_command(work):
    run = _refused(work, "quantize", "-v", "m.onnx", "-o", "nope/out.onnx", "--calib", "calib.npy",
                   pattern=r"folder nope does not exist")
    assert "unrecognized" not in run.text


def test_internal_error_is_one_paragraph_with_a_bug_hint(work, monkeypatch, capsys):
    import lowbit
    from lowbit.cli.commands import main

    def broken(*a, **k):
        raise RuntimeError("an invariant lowbit relies on was broken")

    monkeypatch.setattr(lowbit, "quantize", broken)
    argv = ["quantize", str(work / "m.onnx"), "-o", str(work / "out.onnx"), "--calib", str(work / "calib.npy")]
    assert main(argv) == 1
    text = capsys.readouterr()
    text = text.out + text.err
    assert TRACEBACK not in text and "invariant lowbit relies on" in text and "-v" in text and "bug" in text
    assert len([line for line in text.splitlines() if line.strip()]) == 1, text
    assert main(["quantize", "-v", *argv[1:]]) == 1  # -v after the command: the traceback, for the report
    assert TRACEBACK in capsys.readouterr().err
    assert not (work / "out.onnx").exists()


# --- the library raises lowbit errors for user input ---------------------------------------------
def test_library_raises_lowbit_errors(work, small_model_torch):
    import lowbit
    from lowbit.load.model import load_model
    from lowbit.qat import fit
    from lowbit.transformers.pipeline import plan_int4

    model = onnx.load(work / "m.onnx")
    with pytest.raises(ConfigError, match="rounding"):
        plan_int4(model, rounding="nearest")
    with pytest.raises(ConfigError, match="group_size"):
        plan_int4(model, group_size=0, rounding="rtn")
    with pytest.raises(ConfigError, match="int8_layers"):
        plan_int4(model, rounding="rtn", int8_layers=["no_such_layer"])
    with pytest.raises(ConfigError, match="epochs"):
        fit(small_model_torch, [], epochs=0)
    with pytest.raises(ConfigError, match="schedule"):
        fit(small_model_torch, [], schedule="linear")
    (work / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot resume"):
        fit(small_model_torch, [], checkpoint=str(work / "junk.pt"))
    with pytest.raises(ModelError, match="'offset' must be a whole number"):
        load_model(work / _external(work, _set("offset", "1.5")))
    with pytest.raises(ModelError, match="cannot be loaded|gives outputs"):
        proto = onnx.load(work / "m.onnx")
        proto.graph.node[-1].op_type, proto.graph.node[-1].domain = "NoSuchOp", "com.microsoft"
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        lowbit.evaluate(work / "m.onnx", proto, np.load(work / "eval.npy"))
    assert issubclass(ConfigError, LowbitError) and issubclass(DataError, LowbitError)
