"""FP16 emission through onnxconverter-common, with lowbit's list of ops that stay in FP32."""

from __future__ import annotations

import logging
import warnings

import onnx
from onnxconverter_common import float16

from lowbit import __version__
from lowbit.emit.metadata import record_plan
from lowbit.graph import GraphIndex
from lowbit.plan import NodePlan, QuantPlan
from lowbit.prepare import fingerprint

log = logging.getLogger(__name__)

# Ops whose FP16 result can overflow or lose too much: exponentials, reductions over many
# values, normalisations. They stay FP32 with Casts around them.
UNSAFE_IN_FP16 = {
    "Softmax": "softmax's exponentials overflow FP16 (max 65504)",
    "LogSoftmax": "exponentials overflow FP16",
    "Exp": "exponentials overflow FP16",
    "Log": "loses precision near 0 in FP16",
    "Pow": "powers overflow FP16",
    "ReduceMean": "long reductions lose precision in FP16",
    "ReduceSum": "long reductions lose precision in FP16",
    "ReduceSumSquare": "squares of sums overflow FP16",
    "ReduceL2": "squares of sums overflow FP16",
    "LayerNormalization": "variance of many values loses precision in FP16",
    "Sqrt": "part of normalisations; kept exact",
    "Reciprocal": "small denominators overflow FP16",
    "Erf": "kept exact for GELU",
}


# The network's first layers stay FP32 while they hold at most this share of the weights: an error
# made there is amplified by every later layer, and they cost almost nothing in size.
EARLY_FP32_WEIGHT_BUDGET = 0.01


def early_layers(model: onnx.ModelProto, budget: float = EARLY_FP32_WEIGHT_BUDGET) -> dict[str, str]:
    """{node: reason} for the weighted layers nearest the input, up to `budget` of all weights."""
    import numpy as np

    g = GraphIndex(model)
    sizes = []
    for node in g.graph.node:
        n = sum(int(np.prod(g.initializers[i].dims)) for i in node.input if i in g.initializers
                and len(g.initializers[i].dims) > 1)
        if n:
            sizes.append((node.name, n))
    total = sum(n for _, n in sizes) or 1
    out, used = {}, 0
    for name, n in sizes:
        if used + n > budget * total:
            break
        used += n
        out[name] = (f"kept FP32: one of the first layers, where an FP16 rounding error is amplified by every later "
                     f"layer; together they hold {100 * used / total:.2f}% of the weights")
    return out


def fp16_plan(model: onnx.ModelProto, block: dict[str, str], nodes_fp32: dict[str, str] | None = None) -> QuantPlan:
    g = GraphIndex(model)
    plan = QuantPlan(precision="fp16", model_fingerprint=fingerprint(model), lowbit_version=__version__,
                     config={"precision": "fp16"})
    for node in g.graph.node:
        if not any(g.is_float(o) for o in node.output):
            continue  # shape arithmetic and integer paths are not affected
        if node.op_type in block:
            plan.nodes[node.name] = NodePlan(node.name, node.op_type, "fp32", block[node.op_type])
        elif node.name in (nodes_fp32 or {}):
            plan.nodes[node.name] = NodePlan(node.name, node.op_type, "fp32", nodes_fp32[node.name])
        else:
            plan.nodes[node.name] = NodePlan(node.name, node.op_type, "fp16", "FP16 weights and arithmetic")
    return plan


def emit_fp16(model: onnx.ModelProto, keep_io_types: bool = True) -> tuple[onnx.ModelProto, QuantPlan]:
    """FP16 model and its plan; graph inputs/outputs stay float32 when `keep_io_types`."""
    block = {op: "not supported in FP16 by the converter" for op in float16.DEFAULT_OP_BLOCK_LIST}
    block.update(UNSAFE_IN_FP16)
    early = early_layers(model)
    plan = fp16_plan(model, block, early)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about every clamped constant
        out = float16.convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=sorted(block),
                                               node_block_list=sorted(early), disable_shape_infer=False)
    record_plan(out, plan)
    return out, plan
