"""The README's Python snippet, run as written, gives the same model bytes as its CLI command
(`--preset int8`): the two ways in are one pipeline, and the README says so."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LOWBIT = Path(sys.executable).parent / "lowbit"


def _section_block(text: str, heading: str, lang: str) -> str:
    section = text.split(heading, 1)[1]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def _small_cnn(path: Path) -> None:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (10, 8)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c"], strides=[4, 4], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1, name="classifier")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _photos(folder: Path, n: int, seed: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):  # smooth gradients plus noise: JPEG-like content at a photo's size
        yy, xx = np.mgrid[0:256, 0:320]
        base = np.stack([(xx * rng.uniform(0.3, 1)) % 256, (yy * rng.uniform(0.3, 1)) % 256,
                         ((xx + yy) * rng.uniform(0.2, 0.6)) % 256], -1)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"photo_{i}.jpg", quality=90)


def test_readme_python_snippet_gives_the_cli_presets_bytes(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    snippet = _section_block(readme, "## Python", "python")
    command = _section_block(readme, "## Command line", "bash").replace("\\\n", " ")
    assert "--preset int8" in command and '"int8"' in snippet
    _small_cnn(tmp_path / "model.onnx")
    for name, seed in (("calib", 1), ("eval", 2)):
        _photos(tmp_path / name, 6, seed)
        os.symlink(tmp_path / name, tmp_path / f"{name}_images")  # the CLI example's folder names
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))  # both runs read the same layer costs
    exec(compile(snippet, "README.md (Python)", "exec"), {"__name__": "readme"})
    python_bytes = (tmp_path / "model.int8.onnx").read_bytes()
    (tmp_path / "model.int8.onnx").unlink()
    args = shlex.split(command)
    assert args[0] == "lowbit"
    p = subprocess.run([str(LOWBIT), *args[1:]], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={**os.environ, "LOWBIT_CACHE": str(tmp_path / "cache")}, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert (tmp_path / "model.int8.onnx").read_bytes() == python_bytes
    assert (tmp_path / "report.html").exists() and (tmp_path / "plan.json").exists()
