"""Static INT8 presets on recurrent layers (issue 16): ONNX Runtime has no integer LSTM / GRU / RNN
kernel, so the layer keeps float arithmetic, but its W and R are stored INT8 with a scale per group
('w8'), recorded as such in the plan, simulated with the same values, and re-applied byte for byte."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import lowbit
from lowbit.api import VerifyOptions
from lowbit.emit.qdq import emit_simulation
from lowbit.observe import session

NO_LATENCY = VerifyOptions(threads=(), parity_batches=4)
ZOO = Path(__file__).resolve().parents[1] / ".cache" / "zoo"


class Recurrent(torch.nn.Module):
    """A linear front, one recurrent layer holding ~97% of the weights, a linear head."""

    def __init__(self, cell: type) -> None:
        super().__init__()
        self.front = torch.nn.Linear(32, 64)
        self.rnn = cell(64, 128, batch_first=True)
        self.head = torch.nn.Linear(128, 8)

    def forward(self, x):
        return self.head(self.rnn(torch.relu(self.front(x)))[0][:, -1])


def _export(cell: type) -> tuple[onnx.ModelProto, int]:
    torch.manual_seed(0)
    net = Recurrent(cell).eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(4, 10, 32),), buf, input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue()), len(buf.getvalue())


def _data(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(4, 10, 32)).astype(np.float32) for _ in range(n)]


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)))


@pytest.mark.parametrize("cell", [torch.nn.LSTM, torch.nn.GRU])
def test_static_int8_stores_recurrent_weights_int8(cell):
    fp32, fp32_bytes = _export(cell)
    r = lowbit.quantize(fp32, "int8-fast", _data(16, 0), eval_data=_data(4, 1), verify=NO_LATENCY)
    rnn = next(n for n in r.plan.nodes.values() if n.op == cell.__name__)
    assert rnn.precision == "w8" and f"no integer {cell.__name__} kernel" in rnn.reason
    big_floats = [t.name for t in r.model.graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 4096]
    assert not big_floats, big_floats  # W and R stored INT8 (the 1 x 8H bias stays FP32)
    assert len(r.model.SerializeToString()) < 0.35 * fp32_bytes
    x = _data(1, 2)[0]
    ref = session(fp32).run(None, {"x": x})[0]
    got = session(r.model).run(None, {"x": x})[0]
    # static INT8 linear layers plus 8-bit W and R: measured 36.7 dB (LSTM), 38.6 dB (GRU)
    assert _sqnr(ref, got) > 30
    # the simulation the search and parity use computes the very weights the file folds at load
    sim = session(emit_simulation(r.float_model, r.plan)).run(None, {"x": x})[0]
    assert _sqnr(got, sim) > 60  # measured ~135 dB: float summation order only
    assert r.report.variants[1]["parity"]["passed"], r.report.variants[1]["parity"]


def test_recurrent_plan_reapplies_byte_identically(tmp_path):
    fp32, _ = _export(torch.nn.LSTM)
    r = lowbit.quantize(fp32, "int8", _data(16, 0), output=tmp_path / "a.onnx", verify=None)
    r.plan.save(tmp_path / "plan.json")
    (tmp_path / "float.onnx").write_bytes(r.float_model.SerializeToString())
    r2 = lowbit.quantize(tmp_path / "float.onnx", "int8", plan=tmp_path / "plan.json", output=tmp_path / "b.onnx",
                         verify=None)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert r2.plan.nodes == r.plan.nodes


def test_keep_float_pattern_keeps_recurrent_weights_fp32():
    fp32, _ = _export(torch.nn.GRU)
    gru = next(n.name for n in fp32.graph.node if n.op_type == "GRU")
    r = lowbit.quantize(fp32, lowbit.QuantConfig(keep_float=[gru]), _data(8, 0), verify=None)
    assert r.plan.nodes[gru].precision == "fp32"
    assert any(t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 4096 for t in r.model.graph.initializer)
