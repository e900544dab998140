"""What ONNX Runtime can run on integers, per operator, and where each operator keeps its weights.

These tables decide QDQ placement: a node gets Q/DQ around it only where ONNX Runtime has an
integer kernel it can fuse the pattern into, otherwise the Q/DQ pair would only add work.
"""

from __future__ import annotations

import onnx

from lowbit.onnx.graph import GraphIndex

# Ops with a weight: fused to QLinearConv / QGemm / MatMulInteger-style kernels.
WEIGHTED_OPS = {"Conv", "Gemm", "MatMul"}
# Ops with integer kernels on activations only (com.microsoft QLinear* or native int8 kernels).
ACTIVATION_OPS = {"Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool"}
# Ops that only move or select values: they run on integers with the input's own scale.
PASSTHROUGH_OPS = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
# Activations that a quantized output range clips for free: removed when folded.
FOLDABLE_ACTIVATIONS = {"Relu", "Clip"}

WHY_FLOAT = {
    "ConvTranspose": "ConvTranspose has no fused integer kernel in ONNX Runtime's CPU provider",
    "Softmax": "softmax is numerically sensitive and has no fast integer kernel on CPU",
    "LayerNormalization": "layer norm stays in float: its statistics need float precision",
    "Sigmoid": "no fused integer kernel; runs in float",
    "HardSigmoid": "no fused integer kernel; runs in float",
    "Erf": "GELU (erf form) stays in float",
    "Gelu": "GELU stays in float",
    "Relu": "standalone Relu (not after a quantized layer) runs in float",
    "Clip": "standalone Clip (not after a quantized layer) runs in float",
}


def why_float(op: str) -> str:
    return WHY_FLOAT.get(op, f"no integer kernel for {op} in ONNX Runtime; runs in float")


def weight_slots(node: onnx.NodeProto, g: GraphIndex) -> tuple[int | None, int | None, int]:
    """(weight input index, bias input index, weight channel axis) of a weighted node, or
    (None, None, 0) if its weight is computed at run time (MatMul of two activations)."""
    op = node.op_type
    if op == "Conv":
        return 1, (2 if len(node.input) > 2 and node.input[2] else None), 0
    if op == "Gemm":
        if g.constant(node.input[1]) is None:
            return None, None, 0
        axis = 0 if g.attr(node, "transB", 0) else 1
        bias = 2 if len(node.input) > 2 and node.input[2] and g.constant(node.input[2]) is not None else None
        return 1, bias, axis
    if op == "MatMul":
        w = g.constant(node.input[1])
        if w is None or w.ndim < 2:
            return None, None, 0
        return 1, None, w.ndim - 1  # one scale per output column
    return None, None, 0


def clip_bounds(node: onnx.NodeProto, g: GraphIndex) -> tuple[float | None, float | None]:
    """(min, max) of a Relu or Clip node (either opset style); None where unbounded or computed at run time."""
    if node.op_type == "Relu":
        return 0.0, None
    lo = hi = None
    if len(node.input) > 1 and node.input[1]:
        v = g.value(node.input[1])
        lo = None if v is None else float(v)
    if len(node.input) > 2 and node.input[2]:
        v = g.value(node.input[2])
        hi = None if v is None else float(v)
    if g.attr(node, "min") is not None:
        lo = float(g.attr(node, "min"))
    if g.attr(node, "max") is not None:
        hi = float(g.attr(node, "max"))
    return lo, hi

# The weights W (input) and R (recurrence) of recurrent layers, slots 1 and 2, each (directions,
# gates x hidden, K). ONNX Runtime has no integer LSTM / GRU / RNN kernel, so every INT8 preset stores
# them weight-only (lowbit.emit.weight_storage; axis 0: one scale per group of 32 along gates x K).
RECURRENT_SLOTS = {"LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2)}
