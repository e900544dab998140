"""Float constants of quantized Add / Mul put on a uint8 grid so ONNX Runtime fuses QLinearAdd /
QLinearMul instead of DQ -> float op -> Q (lowbit.emit.const_operands), checked on a hand-built graph
in the PP-LCNet shape (Conv -> Mul(constant first) -> Add -> HardSwish -> Mul -> Add)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.emit.const_operands import uint8_grid


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def lcnet_block(seed: int = 0, shift_shape=(1,)) -> onnx.ModelProto:
    """x -> Conv -> Mul(scale, y) -> Add(y, shift) -> HardSigmoid * y -> Mul(y, 0.8) -> Add(y, 0.1) -> Conv."""
    rng = np.random.default_rng(seed)
    inits = {"w1": (rng.normal(size=(8, 3, 3, 3)) * 0.3).astype(np.float32), "b1": rng.normal(size=8).astype(np.float32),
             "scale": np.array([1.3], np.float32), "shift": np.full(shift_shape, -0.2, np.float32),
             "s2": np.array([0.8], np.float32), "c2": np.array([0.1], np.float32),
             "w2": (rng.normal(size=(8, 8, 1, 1)) * 0.3).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["scale", "y1"], ["y2"], name="lab_mul"),
             helper.make_node("Add", ["y2", "shift"], ["y3"], name="lab_add"),
             helper.make_node("HardSigmoid", ["y3"], ["hs"], name="hsig", alpha=1 / 6),
             helper.make_node("Mul", ["y3", "hs"], ["y4"], name="hswish"),
             helper.make_node("Mul", ["y4", "s2"], ["y5"], name="post_mul"),
             helper.make_node("Add", ["y5", "c2"], ["y6"], name="post_add"),
             helper.make_node("Conv", ["y6", "w2"], ["out"], name="conv2")]
    graph = helper.make_graph(nodes, "lcnet", [_vi("x", ["N", 3, 16, 16])], [_vi("out", ["N", 8, 16, 16])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_uint8_grid_holds_scalars_exactly_and_refuses_what_it_would_bend():
    for c in (0.7, -2.5, 1e-3, 6.0):
        q, s, z = uint8_grid(np.array([c], np.float32))
        assert abs((float(q[0]) - float(z)) * float(s) - c) <= 1e-6 * abs(c)
    assert uint8_grid(np.array([1.0, 0.01], np.float32)) is None  # 0.01 would move by 22%
    assert uint8_grid(np.zeros(3, np.float32)) is None


def test_quantized_add_mul_with_constants_fuse_into_integer_kernels(tmp_path):
    model = lcnet_block()
    rng = np.random.default_rng(2)
    calib = [rng.normal(size=(1, 3, 16, 16)).astype(np.float32) for _ in range(16)]
    out = tmp_path / "q.onnx"
    lowbit.quantize(model, "int8-fast", calib, output=out)
    q = onnx.load(str(out))
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    for n in q.graph.node:
        if n.op_type in ("Add", "Mul"):  # every operand of a quantized binary op is dequantized
            assert all(producers.get(i) == "DequantizeLinear" for i in n.input), (n.name, list(n.input))
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    fused = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert fused["Mul"] == 0 and fused["Add"] == 0, fused  # all ran as QLinearMul / QLinearAdd
    x = rng.normal(size=(4, 3, 16, 16)).astype(np.float32)
    ref, got = _run(model, x), ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
    assert sqnr > 25, sqnr
