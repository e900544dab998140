"""Block-wise input quantization for simulations: what ONNX Runtime's MatMulNBits int8 path does
to a layer's input (per block of K values, scale = max|x| / 127), written as float ops so that a
simulated plan with 8-bit block weights sees the same input rounding as the deployed model.

Shared by the QDQ simulation (`emit.qdq`) and the block-weight emitter (`emit.int4`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.core.granularity import PerGroup
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.names import Names
from lowbit.plan.quant_plan import QuantPlan


# plan.config["storage"] of the int4 preset's plans: the compute level of its 4-bit MatMulNBits nodes
_LEVEL = "MatMulNBits accuracy_level="


def storage_record(level: int) -> str:
    """What plan.config['storage'] holds for 4-bit blocks computed at `level` (0 float, 4 int8)."""
    return f"{_LEVEL}{int(level)}"


def accuracy_level(plan: QuantPlan) -> int:
    """The compute level of `plan`'s 4-bit MatMulNBits nodes (0: float, unless the plan says)."""
    record = str((plan.config or {}).get("storage") or "")
    return int(record[len(_LEVEL):]) if record.startswith(_LEVEL) and record[len(_LEVEL):].isdigit() else 0


def _int8_input(bits: int, level: int) -> bool:
    """True where MatMulNBits quantizes its input per block to int8 at run time."""
    return bits == 8 or level == 4


def quantize_block_inputs(nodes: list[onnx.NodeProto], g: GraphIndex, plan: QuantPlan, opset: int,
                          names: Names | None = None) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """(new initializers, `nodes`) with, before each MatMul / Gemm whose block weights compute in
    int8 (8-bit blocks; 4-bit ones at accuracy level 4), what
    MatMulNBits' int8 path does to its input (`block_input_fake_quant`), for simulations. `g`
    indexes a model holding the weights (for K)."""
    names = names if names is not None else Names(g.model)
    level = accuracy_level(plan)
    inits, out = [], []
    for node in nodes:
        t = plan.tensors.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 else None
        q = t.qparams if t is not None and t.role == "weight" else None
        if q is not None and isinstance(q.granularity, PerGroup) and _int8_input(q.dtype.bits, level):
            shape = g.constant(t.name).shape
            k = int(shape[1] if node.op_type == "Gemm" else shape[0])
            prefix = names.fresh_prefix(f"{node.name}_blockq", _BLOCKQ_MADE)
            made, pre, node.input[0] = block_input_fake_quant(node.input[0], prefix, k, q.granularity.size, opset)
            inits += made
            out += pre
        out.append(node)
    return inits, out


_BLOCKQ_MADE = tuple(f"_{s}" for s in ("blocks", "127", "tiny", "axes", "abs", "amax", "ReduceMax", "shape", "Shape", "x",
                                        "Reshape", "Abs", "s0", "Scale", "s", "NonZero", "div", "Div", "round",
                                        "Round", "dq", "Mul", "out", "Back"))


def block_input_fake_quant(x: str, prefix: str, k: int, size: int, opset: int
                           ) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto], str]:
    """(initializers, nodes, output) computing what MatMulNBits' int8 path does to its input `x`:
    per block of `size` values along K, scale = max|x| / 127, x -> round(x / scale) * scale."""
    p = prefix
    inits = [numpy_helper.from_array(np.asarray([-1, k // size, size], np.int64), f"{p}_blocks"),
             numpy_helper.from_array(np.float32(127.0), f"{p}_127"),
             numpy_helper.from_array(np.float32(np.finfo(np.float32).tiny), f"{p}_tiny")]
    if opset >= 18:  # ReduceMax's axes moved from attribute to input
        inits.append(numpy_helper.from_array(np.asarray([2], np.int64), f"{p}_axes"))
        amax = helper.make_node("ReduceMax", [f"{p}_abs", f"{p}_axes"], [f"{p}_amax"], name=f"{p}_ReduceMax", keepdims=1)
    else:
        amax = helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_amax"], name=f"{p}_ReduceMax", axes=[2], keepdims=1)
    nodes = [
        helper.make_node("Shape", [x], [f"{p}_shape"], name=f"{p}_Shape"),
        helper.make_node("Reshape", [x, f"{p}_blocks"], [f"{p}_x"], name=f"{p}_Reshape"),
        helper.make_node("Abs", [f"{p}_x"], [f"{p}_abs"], name=f"{p}_Abs"),
        amax,
        helper.make_node("Div", [f"{p}_amax", f"{p}_127"], [f"{p}_s0"], name=f"{p}_Scale"),
        helper.make_node("Max", [f"{p}_s0", f"{p}_tiny"], [f"{p}_s"], name=f"{p}_NonZero"),
        helper.make_node("Div", [f"{p}_x", f"{p}_s"], [f"{p}_div"], name=f"{p}_Div"),
        helper.make_node("Round", [f"{p}_div"], [f"{p}_round"], name=f"{p}_Round"),
        helper.make_node("Mul", [f"{p}_round", f"{p}_s"], [f"{p}_dq"], name=f"{p}_Mul"),
        helper.make_node("Reshape", [f"{p}_dq", f"{p}_shape"], [f"{p}_out"], name=f"{p}_Back"),
    ]
    return inits, nodes, f"{p}_out"
