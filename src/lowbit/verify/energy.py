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

from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import weight_slots

SOURCE = ("Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014 "
          "(45 nm, 0.9 V): estimate, not a measurement")

# picojoules, Horowitz ISSCC 2014 table
MULT_PJ = {"int8": 0.2, "fp16": 1.1, "fp32": 3.7}
ADD_PJ = {"int8": 0.1, "fp16": 0.4, "fp32": 0.9}       # int8 MACs accumulate in int32: 0.1 pJ
SRAM_PJ_PER_BYTE = 20.0 / 8                              # 32 KB SRAM, 64-bit read: 20 pJ
DRAM_PJ_PER_BYTE = 1300.0 / 8                            # DRAM, 64-bit access: 1.3-2.6 nJ (low end)
BYTES = {"int8": 1, "w8": 1, "int8-block": 1, "w4": 0.5, "int4": 0.5, "fp16": 2, "fp32": 4,
         "fp16-storage": 2}  # w8, fp16-storage: stored small, computed in FP32

# FP16 weights on a CPU without FP16 arithmetic (x86): cast to FP32 once at load, every MAC in FP32
FP16_STORAGE = "fp16-storage"

ASSUMPTIONS = (
    "Estimate, not a measurement: Horowitz ISSCC 2014, 45 nm, 0.9 V; one inference at batch 1.",
    "A MAC = one multiply at the operand precision + one add at the accumulator's (int32 for INT8).",
    "Priced on what executes: FP16 weights on a CPU without FP16 arithmetic (x86) are read as 2 bytes "
    "but every MAC is FP32; INT8-stored weights in float layers (w8) likewise.",
    "Weights read once per inference from DRAM (1.3 nJ / 64 bit); activations through a 32 KB SRAM "
    "(20 pJ / 64 bit).",
    "Only Conv / Gemm / MatMul arithmetic is counted; instruction, control and cache overheads are not.",
)


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


def priced_precisions(plan, model_bytes: bytes | None, fp16_arithmetic: bool) -> dict[str, str]:
    """Per node, the precision its arithmetic runs in: the plan's, except FP16 without FP16
    arithmetic (`fp16_arithmetic` False: x86) and FP16-stored weights (plan storage 'fp16-weights',
    read back from `model_bytes`), both priced as FP32 arithmetic on 2-byte weights."""
    precisions = {n: p.precision for n, p in plan.nodes.items()}
    if plan.precision != "fp16":
        return precisions
    if not fp16_arithmetic:
        precisions = {n: FP16_STORAGE if p == "fp16" else p for n, p in precisions.items()}
    if plan.config.get("storage") == "fp16-weights" and model_bytes is not None:
        q = onnx.ModelProto()
        q.ParseFromString(model_bytes)
        half = {i.name for i in q.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
        stored = {n.output[0] for n in q.graph.node if n.op_type == "Cast" and n.input and n.input[0] in half}
        for n in q.graph.node:
            if n.op_type in ("Conv", "Gemm", "MatMul") and stored & set(n.input):
                precisions[n.name] = FP16_STORAGE
    return precisions


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
            "source": SOURCE, "assumptions": list(ASSUMPTIONS)}
