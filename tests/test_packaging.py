"""`pip install lowbit` is what an ONNX-only user gets: a fresh venv (no system site-packages) with
lowbit installed from this checkout pulls no torch and no matplotlib, quantizes an ONNX model to INT8
from the CLI, writes an HTML report that says how to get its charts, and answers a torch feature with
one paragraph naming the extra (exit 2), not a traceback."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NETWORK = ("Could not find a version", "No matching distribution", "Failed to establish a new connection",
           "Temporary failure in name resolution", "Max retries exceeded")


def _cnn(path: Path) -> None:
    """Conv 3->64 -> Relu -> Conv 64->64 -> Relu -> Conv 64->128 /2 -> Relu -> global pool -> Gemm 128->10:
    ~450 KB, so INT8 is smaller, with small fan-ins (GPTQ's cost grows with their cube). Random weights:
    this test makes no accuracy claim, it checks that the install runs."""
    rng = np.random.default_rng(0)
    w = lambda name, *shape: numpy_helper.from_array(  # noqa: E731
        (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)
    inits = [w("w1", 64, 3, 3, 3), w("w2", 64, 64, 3, 3), w("w3", 128, 64, 3, 3), w("w4", 10, 128),
             numpy_helper.from_array(np.zeros(10, np.float32), "b4")]
    node = helper.make_node
    nodes = [node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), node("Relu", ["c2"], ["r2"]),
             node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]), node("Relu", ["c3"], ["r3"]),
             node("GlobalAveragePool", ["r3"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w4", "b4"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run(cmd: list, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def test_pip_install_pulls_no_torch_and_quantizes_onnx(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py, lowbit = env_dir / "bin" / "python", env_dir / "bin" / "lowbit"
    # a copy of the checkout's files (tracked or new, not ignored): the build writes beside the sources
    src = tmp_path / "src"
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT).stdout
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file() and not rel.startswith(("tests/", "benchmarks/", "examples/")):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    p = _run([py, "-m", "pip", "install", "-q", str(src)], tmp_path)
    if p.returncode and any(s in p.stderr for s in NETWORK):
        pytest.skip(f"pip could not reach a package index: {p.stderr.strip().splitlines()[-1]}")
    assert p.returncode == 0, p.stderr[-3000:]
    installed = _run([py, "-m", "pip", "list", "--format=freeze"], tmp_path).stdout.lower()
    names = {line.split("==")[0] for line in installed.split()}
    assert "lowbit" in names and "onnxruntime" in names, installed
    assert not names & {"torch", "matplotlib", "pytest", "hypothesis", "atheris"}, installed

    _cnn(tmp_path / "model.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(1).uniform(0, 1, (16, 3, 16, 16)).astype(np.float32))
    p = _run([lowbit, "quantize", "model.onnx", "--precision", "int8", "--calib", "x.npy", "-o", "y.onnx",
              "--report-html", "r.html", "--threads", "1", "--latency-runs", "3"], tmp_path)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert (tmp_path / "y.onnx").stat().st_size < 0.5 * (tmp_path / "model.onnx").stat().st_size
    page = (tmp_path / "r.html").read_text()
    assert "lowbit[report]" in page and "data:image/png" not in page   # charts left out, and said why

    # a torch feature: one paragraph naming the extra, exit 2, no traceback
    p = _run([py, "-c", "import lowbit.qat"], tmp_path)
    assert p.returncode == 1 and "MissingExtra" in p.stderr and "lowbit[torch]" in p.stderr, p.stderr[-2000:]
    np.savez(tmp_path / "train.npz", x=np.load(tmp_path / "x.npy"), y=np.arange(16) % 10)
    p = _run([lowbit, "qat", "model.onnx", "--train", "train.npz", "--eval", "train.npz", "-o", "q.onnx"], tmp_path)
    text = p.stdout + p.stderr
    assert p.returncode == 2 and "lowbit[torch]" in text and "Traceback" not in text, text[-2000:]
    assert not (tmp_path / "q.onnx").exists()
