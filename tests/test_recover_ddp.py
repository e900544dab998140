"""Recover under torchrun with 2 processes on CPU (gloo): each rank trains on its half of every global
batch and the result matches one process on the same global batches within noise (Adam turns
reduction-order differences on near-zero gradients into small steps, so states are not bit-equal)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_recover import _images, _w4_config, trained_teacher  # noqa: E402

OPTS = dict(budget="12steps", batch_size=16, eval_every=4, patience=100, augment=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recover(model_path: str) -> tuple[dict, np.ndarray]:
    """(recover summary, the shipped model's logits on unseen images)."""
    import onnx
    import onnxruntime as ort

    import lowbit
    from lowbit.recover import Recover

    calib, _ = _images(64, seed=1)
    unseen, _ = _images(64, seed=2)
    res = lowbit.quantize(onnx.load(model_path), _w4_config(), calib, verify=None, recover=Recover(**OPTS))
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return res.plan.config["recover"], sess.run(None, {sess.get_inputs()[0].name: unseen})[0]


def _worker(model_path: str, out: str) -> None:
    from lowbit.qat import distributed as D

    torch.set_num_threads(1)
    rank, size = D.init()
    assert size == 2
    info, logits = recover(model_path)
    np.save(Path(out) / f"logits{rank}.npy", logits)
    (Path(out) / f"info{rank}.json").write_text(json.dumps(info))
    D.finish()


def test_recover_two_processes_match_one(tmp_path):
    import onnx

    torch.set_num_threads(1)
    model_path = tmp_path / "teacher.onnx"
    onnx.save(trained_teacher(), model_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           f"--master_port={_free_port()}", __file__, str(model_path), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info0, info1 = (json.loads((tmp_path / f"info{r}.json").read_text()) for r in (0, 1))
    l0, l1 = (np.load(tmp_path / f"logits{r}.npy") for r in (0, 1))
    np.testing.assert_array_equal(l0, l1)  # the ranks ship the same model
    single, logits = recover(str(model_path))
    assert single["steps"] == info0["steps"] == 12
    before = single["held_out_before"]["score"]
    assert abs(info0["held_out_before"]["score"] - before) < 1e-4 * before  # same plan, same held-out data
    after1, after2 = single["held_out_after"]["score"], info0["held_out_after"]["score"]
    assert after1 < 0.9 * before and after2 < 0.9 * before
    assert abs(after1 - after2) < 0.05 * before, (before, after1, after2)
    assert np.mean(l0.argmax(1) == logits.argmax(1)) >= 0.95


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
