"""The int4 preset from the CLI: MatMul / Gemm in 4-bit blocks run by MatMulNBits (block size and
accuracy level selectable), Conv on the int8 kernel with 4-bit storage, honest labels (int4, w4a8)
in the report's title, table and JSON, and ONNX Runtime within one step of lowbit's simulation."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import lowbit
from lowbit.cli.commands import main
from lowbit.cli.config_file import load_config
from lowbit.errors import ConfigError


@pytest.fixture()
def files(tmp_path, calib_arrays, eval_arrays):
    np.save(tmp_path / "calib.npy", np.stack(calib_arrays))
    np.save(tmp_path / "eval.npy", np.stack(eval_arrays))
    return tmp_path / "calib.npy", tmp_path / "eval.npy"


@pytest.mark.parametrize("level", [0, 4])
def test_int4_preset_blocks_gemm_and_stores_conv_in_4_bits(small_model_path, files, tmp_path, level, capsys):
    calib, ev = files
    out, report = tmp_path / "m.int4.onnx", tmp_path / "r.json"
    assert main(["quantize", str(small_model_path), "--preset", "int4", "--block-size", "16", "--accuracy-level",
                 str(level), "--calib", str(calib), "--eval", str(ev), "-o", str(out), "--threads", "1",
                 "--latency-runs", "3", "--report-json", str(report)]) == 0
    model = onnx.load(str(out))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 1  # the classifier head (K = 16)
    attrs = {a.name: a.i for a in nbits[0].attribute}
    assert attrs["bits"] == 4 and attrs["block_size"] == 16 and attrs.get("accuracy_level", 0) == level
    # the three convolutions' weights are stored in 4 bits (Cast to int8 for the int8 kernel at load)
    assert sum(t.data_type == onnx.TensorProto.INT4 for t in model.graph.initializer) == 3
    r = json.loads(report.read_text())
    assert r["precision"] == "int4" and r["title"].endswith("-> int4")
    assert [v["label"] for v in r["variants"]] == ["fp32", "int4"]
    assert r["variants"][1]["parity"]["passed"]  # ONNX Runtime within one step of the simulation
    assert "int4" in capsys.readouterr().out


def test_w4a8_is_labelled_w4a8(small_model_path, calib_arrays, eval_arrays):
    result = lowbit.quantize(small_model_path, "w4a8", calib_arrays, eval_data=eval_arrays,
                             verify=lowbit.VerifyOptions(threads=()))
    data = result.report.data
    assert data["precision"] == "w4a8" and data["title"].endswith("-> w4a8")
    assert [v["label"] for v in data["variants"]] == ["fp32", "w4a8"]
    header, rows = result.report.rows()
    assert rows[1][0] == "w4a8"


def test_int4_settings_are_checked(small_model_path, files, tmp_path, capsys):
    calib, _ = files
    base = ["quantize", str(small_model_path), "--calib", str(calib), "-o", str(tmp_path / "m.onnx")]
    assert main([*base, "--preset", "int4", "--block-size", "20"]) == 2
    assert "power of two >= 16" in capsys.readouterr().err
    assert main([*base, "--preset", "int8", "--accuracy-level", "4"]) == 2
    assert "--preset int4" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ConfigError, match="accuracy budget"):
        lowbit.quantize(small_model_path, "int4", str(calib), eval_data=str(calib), max_drop=0.01, verify=None)


def test_int4_config_file_round_trips(tmp_path, capsys):
    assert main(["quantize", "--print-config", "--preset", "int4", "--block-size", "64", "--accuracy-level", "4"]) == 0
    text = capsys.readouterr().out
    assert 'granularity = { kind = "per_group", axis = 0, size = 64 }' in text and "accuracy_level = 4" in text
    (tmp_path / "c.toml").write_text(text)
    config, _ = load_config(tmp_path / "c.toml")
    assert config.precision == "int4" and config.accuracy_level == 4 and config.weights.granularity.size == 64


def test_analyze_int4_is_a_clear_error(small_model_path, calib_arrays, eval_arrays):
    from lowbit.api import analyze

    with pytest.raises(ConfigError, match="analyze ranks the layers of a static int8 plan"):
        analyze(small_model_path, calib_arrays, eval_arrays, "int4")


@pytest.mark.slow
def test_int4_on_every_zoo_model_runs_or_refuses_cleanly(tmp_path):
    """Zoo models as pip packages ship them, through the CLI: exit 0 with a smaller file or exit 2
    with lowbit's paragraph. Three kinds (all nine passed once, in 4 minutes): a VAD with If / LSTM,
    an OCR recognizer with transformer MatMuls after its convolutions, a MatMul-heavy classifier."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        from benchmarks.zoo import data as zdata
        from benchmarks.zoo import models
        from benchmarks.zoo.run import quantize_cmd
    except ImportError:
        pytest.skip("benchmarks/ is not importable")
    if not (models.cache_dir() / "models").is_dir():
        pytest.skip("zoo models not fetched: run bash scripts/setup_zoo.sh")
    for name, entry in models.ZOO.items():
        if name not in ("silero-vad", "ppocrv4-rec", "magika"):
            continue
        model = models.fetch(name)
        folder = tmp_path / name
        folder.mkdir()
        zdata.save(zdata.build(entry.data, n_calib=4, n_eval=1), folder)
        out = folder / "int4.onnx"
        p = subprocess.run(quantize_cmd("int4", model, folder, out, entry.data), capture_output=True, text=True,
                           timeout=600, cwd=root, stdin=subprocess.DEVNULL)
        text = p.stdout + p.stderr
        assert "Traceback (most recent call last)" not in text and p.returncode in (0, 2), (name, text[-3000:])
        if p.returncode == 0:
            in_bytes = sum(f.stat().st_size for f in model.parent.glob(model.name + "*"))
            assert sum(f.stat().st_size for f in folder.glob("int4.onnx*")) < in_bytes, name
        else:
            assert "lowbit error" in text and not out.exists(), (name, text[-2000:])
