"""Energy per inference, ESTIMATED from counted operations and bytes moved.

Per-operation energies are Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014, for a 45 nm process at 0.9 V. A multiply-accumulate is priced as one multiply at the
operand precision plus one add at the accumulator precision (int32 for integer MACs). Weights are
read once per inference from DRAM; activations are read and written through a 32 KB SRAM. This is
an order-of-magnitude model for comparing precisions of one network, not a measurement of any
particular chip: real CPUs add instruction, control and cache overheads the model leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from lowbit.graph import GraphIndex
from lowbit.ops import weight_slots

SOURCE = ("Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014 "
          "(45 nm, 0.9 V): estimate, not a measurement")

# picojoules, Horowitz ISSCC 2014 table
MULT_PJ = {"int8": 0.2, "fp16": 1.1, "fp32": 3.7}
ADD_PJ = {"int8": 0.1, "fp16": 0.4, "fp32": 0.9}       # int8 MACs accumulate in int32: 0.1 pJ
SRAM_PJ_PER_BYTE = 20.0 / 8                              # 32 KB SRAM, 64-bit read: 20 pJ
DRAM_PJ_PER_BYTE = 1300.0 / 8                            # DRAM, 64-bit access: 1.3-2.6 nJ (low end)
BYTES = {"int8": 1, "w8": 1, "int8-block": 1, "w4": 0.5, "int4": 0.5, "fp16": 2, "fp32": 4}  # w8: float arithmetic


@dataclass(frozen=True)
class LayerEnergy:
    node: str
    op: str
    precision: str
    macs: int
    weight_bytes: float
    activation_bytes: float

    @property
    def compute_pj(self) -> float:
        # integer arithmetic: INT8 kernels, 4-bit weights on them (w4), MatMulNBits' int8 path
        p = "int8" if self.precision in ("int8", "int4", "int8-dynamic", "int8-block", "w4") else self.precision
        p = p if p in MULT_PJ else "fp32"
        return self.macs * (MULT_PJ[p] + ADD_PJ[p])

    @property
    def memory_pj(self) -> float:
        return self.weight_bytes * DRAM_PJ_PER_BYTE + self.activation_bytes * SRAM_PJ_PER_BYTE


def _dims(g: GraphIndex, name: str) -> list[int] | None:
    v = g.shaped_values.get(name)  # a table: scanning the graph per tensor was quadratic
    if v is None:
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in v.type.tensor_type.shape.dim]


def count_macs(node: onnx.NodeProto, g: GraphIndex) -> int:
    """Multiply-accumulates of one Conv / Gemm / MatMul at batch 1 (0 for other ops)."""
    out = _dims(g, node.output[0])
    if node.op_type == "Conv":
        w = g.initializers.get(node.input[1])
        if w is None or out is None:
            return 0
        per_output = int(np.prod(w.dims[1:]))  # Cin/group * kh * kw
        return int(np.prod(out[1:])) * per_output
    if node.op_type in ("Gemm", "MatMul"):
        a = _dims(g, node.input[0])
        if a is None or out is None:
            return 0
        k = a[0] if node.op_type == "Gemm" and g.attr(node, "transA", 0) else a[-1]
        return int(np.prod(out)) * int(k)  # out has batch 1
    return 0


def estimate(model: onnx.ModelProto, precisions: dict[str, str] | None = None) -> dict:
    """{'total_uj', 'compute_uj', 'memory_uj', 'macs', 'layers': [...], 'source'} for the
    float model `model` (shapes inferred) run with per-node `precisions` (default all fp32)."""
    g = GraphIndex(model)
    precisions = precisions or {}
    layers = []
    for node in g.graph.node:
        p = precisions.get(node.name, "fp32")
        if p == "folded":
            continue
        w_idx, b_idx, _ = weight_slots(node, g) if node.op_type in ("Conv", "Gemm", "MatMul") else (None, None, 0)
        w_elems = int(np.prod(g.initializers[node.input[w_idx]].dims)) if w_idx is not None else 0
        w_bytes = w_elems * BYTES.get(p if p in BYTES else "int8" if "int8" in p else "fp32", 4)
        act_bytes = 0.0
        for name in list(node.input) + list(node.output):
            if name and name not in g.initializers:
                dims = _dims(g, name)
                if dims is not None:
                    act_bytes += float(np.prod(dims)) * BYTES.get("int8" if p == "int8" else "fp16" if p == "fp16" else "fp32")
        layers.append(LayerEnergy(node.name, node.op_type, p, count_macs(node, g), w_bytes, act_bytes))
    compute = sum(l.compute_pj for l in layers)
    memory = sum(l.memory_pj for l in layers)
    return {"total_uj": (compute + memory) / 1e6, "compute_uj": compute / 1e6, "memory_uj": memory / 1e6,
            "macs": int(sum(l.macs for l in layers)), "weight_bytes": float(sum(l.weight_bytes for l in layers)),
            "layers": [{"node": l.node, "op": l.op, "precision": l.precision, "macs": l.macs,
                        "energy_uj": (l.compute_pj + l.memory_pj) / 1e6} for l in layers if l.macs],
            "source": SOURCE}
