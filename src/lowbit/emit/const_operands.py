"""Constant operands of quantized Add / Mul nodes, put on an 8-bit grid so ONNX Runtime fuses them.

ONNX Runtime turns DQ(a) + DQ(b) -> Add -> Q into QLinearAdd (Mul: QLinearMul) only when both
operands come from DequantizeLinear. A quantized Add or Mul whose other operand is a float constant
(a scale or shift by a scalar, PP-LCNet's affine blocks) stays DQ -> float op -> Q: two passes over
the tensor more than FP32, measured 0.12 ms vs FP32's 0.065 ms on a (1, 32, 80, 80) Mul, where
the fused QLinearMul took 0.057 ms (QLinearAdd 0.033 ms). So such a constant is stored as uint8
with its own scale, where that grid holds every value to within `REL_TOL` of itself (a scalar
always: it lands on the end of its own range); a constant the grid would bend stays float.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.names import Names
from lowbit.plan.quant_plan import QuantPlan

OPS = {"Add", "Mul"}
REL_TOL = 1e-3  # per value: the fused op computes what the float op would, to a tenth of a percent
MAX_VALUES = 4096  # a per-channel vector at most; bigger constants are weights, not operands


def uint8_grid(c: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8] | None:
    """(integers, scale, zero point) of `c` on an asymmetric uint8 grid whose range includes 0, or
    None where some value would move by more than REL_TOL of itself (or `c` is all zeros)."""
    lo, hi = min(0.0, float(c.min())), max(0.0, float(c.max()))
    if hi - lo <= 0 or not np.all(np.isfinite(c)):
        return None
    scale = np.float32((hi - lo) / 255.0)
    zp = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
    q = np.clip(np.rint(c / scale) + float(zp), 0, 255).astype(np.uint8)
    back = (q.astype(np.float32) - np.float32(zp)) * scale
    if np.any(np.abs(back - c) > REL_TOL * np.abs(c)):
        return None
    return q, scale, zp


def quantize_constant_operands(index: GraphIndex, inits: dict[str, TensorProto], plan: QuantPlan,
                               quantized: set[str], names: Names, simulate: bool
                               ) -> tuple[list[TensorProto], list[onnx.NodeProto], dict[tuple[str, int], str]]:
    """(new initializers, DequantizeLinear nodes, {(node name, input index): new input}) for every
    quantized Add / Mul whose one operand is a float constant and whose other operand and output are
    quantized activations (`quantized`: the activations that get Q/DQ). The simulation reads the
    dequantized constant (the same floats the kernel uses)."""
    new_inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    rewire: dict[tuple[str, int], str] = {}
    for p in plan.nodes.values():
        node = index.nodes.get(p.name)
        if (p.precision != "int8" or node is None or node.op_type not in OPS or len(node.input) != 2
                or node.output[0] not in quantized):
            continue
        ks = [k for k, name in enumerate(node.input) if name in inits]
        if len(ks) != 1 or node.input[1 - ks[0]] not in quantized:
            continue
        k = ks[0]
        t = inits[node.input[k]]
        if t.data_type != TensorProto.FLOAT or np.prod(t.dims, dtype=np.int64) > MAX_VALUES:
            continue
        grid = uint8_grid(numpy_helper.to_array(t).astype(np.float32))
        if grid is None:
            continue
        q, scale, zp = grid
        out = names.fresh(f"{t.name}_dq")
        if simulate:
            new_inits.append(numpy_helper.from_array((q.astype(np.float32) - np.float32(zp)) * scale, out))
        else:
            qn, sn, zn = (names.fresh(f"{t.name}{s}") for s in ("_u8", "_s", "_z"))
            new_inits += [numpy_helper.from_array(q, qn), numpy_helper.from_array(np.asarray(scale, np.float32), sn),
                          numpy_helper.from_array(np.asarray(zp, np.uint8), zn)]
            nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [out]))
        rewire[(node.name, k)] = out
    return new_inits, nodes, rewire
