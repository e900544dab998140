"""Refuse a model that is already quantized.

Pip packages ship quantized ONNX files too (ddddocr's `common_old.onnx`: ONNX Runtime's
quantize_dynamic output, ConvInteger / MatMulInteger / DynamicQuantizeLSTM with 8-bit weights).
lowbit quantizes float weights; on such a file every preset wrote the same model back (99.7-100% of
its size) and exited 0. A model whose stored bytes are mostly integer weights read by quantized
operators is refused with the reason; one with a few such layers (a partly quantized export) goes
on, its integer layers left as they are.
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import TensorProto

from lowbit.errors import ModelError
from lowbit.onnx.scopes import scopes

_INTEGER = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16} | {
    getattr(TensorProto, t) for t in ("INT4", "UINT4") if hasattr(TensorProto, t)}
_QUANTIZED_OPS = {"DequantizeLinear", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeLSTM",
                  "DynamicQuantizeMatMul", "MatMulNBits", "MatMulBnb4", "QGemm", "QAttention", "GatherBlockQuantized",
                  "QEmbedLayerNormalization"}
MOSTLY = 0.5  # share of the stored bytes held by integer weights from which the model counts as quantized


def _is_quantized_op(op_type: str) -> bool:
    return op_type in _QUANTIZED_OPS or op_type.startswith("QLinear")


def quantized_weights(model: onnx.ModelProto) -> tuple[int, int, Counter]:
    """(bytes of integer initializers read by quantized operators, bytes of all initializers,
    {operator: count} of the quantized operators reading them), over every graph."""
    integer = total = 0
    ops: Counter = Counter()
    for s in scopes(model):
        inits = {t.name: t for t in s.graph.initializer}
        total += sum(t.ByteSize() for t in inits.values())
        counted: set[str] = set()
        for n in s.graph.node:
            held = [i for i in n.input if i in inits and inits[i].data_type in _INTEGER]
            if not held or not _is_quantized_op(n.op_type):
                continue
            ops[n.op_type] += 1
            for i in set(held) - counted:
                integer += inits[i].ByteSize()
            counted.update(held)
    return integer, total, ops


def refuse_quantized(model: onnx.ModelProto, name: str) -> None:
    """ModelError when most of `model`'s stored bytes are integer weights of quantized operators."""
    integer, total, ops = quantized_weights(model)
    if total == 0 or integer < MOSTLY * total:
        return
    listed = ", ".join(f"{n} {op}" for op, n in ops.most_common())
    raise ModelError(
        f"'{name}' is already quantized: {integer / 2**20:.1f} of its {total / 2**20:.1f} MB of stored tensors are "
        f"integer weights read by quantized operators ({listed}). lowbit quantizes float models; quantizing this "
        f"file again would only add error. Give lowbit the FP32 model this file was made from. Nothing was written.")
