"""QAT's torch versions of ONNX LSTM and Pad compute what ONNX Runtime computes (random weights are
fine here: these are numerical contracts)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lowbit.errors import ModelError
from lowbit.qat.ops import run_op


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _lstm_model(direction: str, seq: int, batch: int, feat: int, hidden: int, rng) -> tuple[onnx.ModelProto, list]:
    dirs = 2 if direction == "bidirectional" else 1
    W = rng.normal(0, 0.4, (dirs, 4 * hidden, feat)).astype(np.float32)
    R = rng.normal(0, 0.4, (dirs, 4 * hidden, hidden)).astype(np.float32)
    B = rng.normal(0, 0.2, (dirs, 8 * hidden)).astype(np.float32)
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "h0", "c0"], ["Y", "Yh", "Yc"], hidden_size=hidden,
                            direction=direction)
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [seq, batch, feat]),
              helper.make_tensor_value_info("h0", TensorProto.FLOAT, [dirs, batch, hidden]),
              helper.make_tensor_value_info("c0", TensorProto.FLOAT, [dirs, batch, hidden])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Yh", "Yc")]
    graph = helper.make_graph([node], "lstm", inputs, outputs,
                              [numpy_helper.from_array(v, n) for n, v in (("W", W), ("R", R), ("B", B))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), [W, R, B]


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_matches_onnx_runtime_in_every_direction(direction):
    rng = np.random.default_rng(0)
    seq, batch, feat, hidden = 7, 3, 5, 4
    model, (W, R, B) = _lstm_model(direction, seq, batch, feat, hidden, rng)
    dirs = W.shape[0]
    X = rng.normal(0, 1, (seq, batch, feat)).astype(np.float32)
    h0 = rng.normal(0, 0.5, (dirs, batch, hidden)).astype(np.float32)
    c0 = rng.normal(0, 0.5, (dirs, batch, hidden)).astype(np.float32)
    want = _ort(model, {"X": X, "h0": h0, "c0": c0})
    t = [torch.from_numpy(v) for v in (X, W, R, B)]
    got = run_op("LSTM", [*t, None, torch.from_numpy(h0), torch.from_numpy(c0)],
                 {"hidden_size": hidden, "direction": direction.encode()})
    assert [tuple(g.shape) for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.detach().numpy(), w, atol=2e-5)


def test_lstm_gradients_reach_its_input_and_what_it_cannot_run_is_named():
    rng = np.random.default_rng(1)
    _, (W, R, B) = _lstm_model("forward", 4, 2, 3, 2, rng)
    X = torch.randn(4, 2, 3, requires_grad=True)
    y, _, _ = run_op("LSTM", [X, torch.from_numpy(W), torch.from_numpy(R), torch.from_numpy(B)], {"hidden_size": 2})
    y.sum().backward()
    assert X.grad is not None and float(X.grad.abs().sum()) > 0
    with pytest.raises(ModelError, match="peepholes"):
        run_op("LSTM", [X, torch.from_numpy(W), torch.from_numpy(R), None, None, None, None, torch.zeros(1, 6)],
               {"hidden_size": 2})
    with pytest.raises(ModelError, match="clip"):
        run_op("LSTM", [X, torch.from_numpy(W), torch.from_numpy(R)], {"hidden_size": 2, "clip": 1.0})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_matches_onnx_runtime(mode):
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (2, 3, 9)).astype(np.float32)
    pads = np.array([0, 0, 2, 0, 0, 3], np.int64)  # the last axis, as an STFT front end pads it
    node = helper.make_node("Pad", ["x", "pads", "v"], ["y"], mode=mode)
    graph = helper.make_graph([node], "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(pads, "pads"), numpy_helper.from_array(np.float32(1.5), "v")])
    want = _ort(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), {"x": x})[0]
    got = run_op("Pad", [torch.from_numpy(x), torch.from_numpy(pads), torch.tensor(1.5)], {"mode": mode.encode()})
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_sqrt_is_exact_and_its_gradient_stays_finite_at_zero():
    """A spectrogram's magnitude sqrt(re^2 + im^2) of a silent frame is sqrt(0): torch's gradient
    there is infinite and would turn a whole recovery step into NaN."""
    x = torch.tensor([0.0, 0.25, 4.0], requires_grad=True)
    y = run_op("Sqrt", [x], {})
    assert y.tolist() == [0.0, 0.5, 2.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.25]
