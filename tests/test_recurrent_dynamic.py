"""int8-dynamic on recurrent layers: LSTM / GRU input and recurrence weights stored as INT8 with a
scale per group (computed in FP32: ONNX Runtime has no dynamic recurrent kernel), a quarter of
their FP32 bytes, with outputs close to FP32."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch

import lowbit
from lowbit.onnx.session import session


class Recurrent(torch.nn.Module):
    def __init__(self, cell: type) -> None:
        super().__init__()
        self.rnn = cell(64, 128, batch_first=True)
        self.head = torch.nn.Linear(128, 8)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("cell", [torch.nn.LSTM, torch.nn.GRU])
def test_recurrent_weights_stored_int8(cell):
    torch.manual_seed(0)
    net = Recurrent(cell).eval()
    x = torch.randn(4, 10, 64)
    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    fp32 = onnx.load_from_string(buf.getvalue())
    r = lowbit.quantize(fp32, "int8-dynamic", verify=None)
    op = cell.__name__
    rnn = next(n for n in r.plan.nodes.values() if n.op == op)
    assert rnn.precision == "w8" and "no dynamic" in rnn.reason
    big_floats = [t.name for t in r.model.graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 4096]
    assert not big_floats, big_floats  # W and R stored INT8 (the 1 x 8H bias stays FP32)
    assert len(r.model.SerializeToString()) < 0.35 * len(buf.getvalue())
    ref = session(fp32).run(None, {"x": x.numpy()})[0]
    got = session(r.model).run(None, {"x": x.numpy()})[0]
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
    assert sqnr > 30, sqnr
