"""FP16 emission through onnxconverter-common, with lowbit's list of ops that stay in FP32."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxconverter_common import float16

from lowbit.emit import subgraphs
from lowbit.emit.metadata import record_plan
from lowbit.load.prepare import drop_inferred_shapes, fingerprint
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.names import Names
from lowbit.package import __version__
from lowbit.plan.quant_plan import NodePlan, QuantPlan

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
    """{node: reason} for the start of the network, cut where a single tensor carries everything
    forward (so one Cast is the only boundary), with at most `budget` of all weights."""
    g = GraphIndex(model)
    nodes = list(g.graph.node)
    weights = [sum(int(np.prod(g.initializers[i].dims)) for i in n.input
                   if i in g.initializers and len(g.initializers[i].dims) > 1) for n in nodes]
    total = sum(weights) or 1
    last_use = {}
    for k, n in enumerate(nodes):
        for i in n.input:
            last_use[i] = k
    outputs = set(g.graph_outputs)
    live: set[str] = set(g.graph_inputs)
    used, cut = 0, -1
    for k, n in enumerate(nodes):
        used += weights[k]
        if used > budget * total:
            break
        live = {t for t in live | set(n.output) if last_use.get(t, -1) > k or t in outputs}
        float_live = [t for t in live if g.is_float(t) or t not in g.elem_types]
        if len(float_live) == 1 and any(weights[: k + 1]):
            cut = k
    share = sum(weights[: cut + 1]) / total
    return {n.name: (f"kept FP32: the network's first layers (up to '{nodes[cut].name}'), where an FP16 rounding "
                     f"error is amplified by every later layer; they hold {100 * share:.2f}% of the weights")
            for n in nodes[: cut + 1]}


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


# Float initializers of 2+ dimensions or at least this many values are weights or tables; small 1-D
# ones may be scales whose exact value matters (a Resize scale of 1/3 is not representable in FP16).
MIN_STORED_ELEMENTS = 256


def emit_fp16_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, QuantPlan]:
    """FP16 storage, FP32 arithmetic: every large float initializer is stored in FP16 and Cast back to
    FP32, a Cast ONNX Runtime folds once at load. For CPUs without FP16 arithmetic (x86: ONNX Runtime
    has no FP16 kernels there, and an FP16 graph runs 0.6-0.9x of FP32): half the file, FP32 speed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    drop_inferred_shapes(out)  # FP32's kernels, FP32's fusions
    outputs = set(GraphIndex(out).graph_outputs)
    early = early_layers(model)  # an FP16 rounding of the first weights is amplified by every later layer
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in out.graph.node:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    plan = QuantPlan(precision="fp16", model_fingerprint=fingerprint(model), lowbit_version=__version__,
                     config={"precision": "fp16", "storage": "fp16-weights"})
    kept, casts = [], []
    made = Names(out)
    for t in out.graph.initializer:
        w = numpy_helper.to_array(t) if t.data_type == TensorProto.FLOAT else None
        if w is None or (w.ndim < 2 and w.size < MIN_STORED_ELEMENTS) or t.name in outputs or not readers.get(t.name) \
                or any(n.name in early for n in readers[t.name]) or not np.all(np.abs(w) <= np.finfo(np.float16).max):
            kept.append(t)
            continue
        p = made.fresh_prefix(t.name, ("_f16", "_cast"))
        kept.append(numpy_helper.from_array(w.astype(np.float16), f"{p}_f16"))
        casts.append(helper.make_node("Cast", [f"{p}_f16"], [t.name], name=f"{p}_cast", to=TensorProto.FLOAT))
        for node in readers[t.name]:
            plan.nodes[node.name] = NodePlan(node.name, node.op_type, "fp16",
                                             "FP16-stored weights, FP32 arithmetic: this CPU has no FP16 kernels in "
                                             "ONNX Runtime, so FP16 arithmetic would run slower than FP32")
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    nodes = casts + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    ops = {n.name: n.op_type for n in model.graph.node}
    for name, why in early.items():
        plan.nodes[name] = NodePlan(name, ops[name], "fp32", why)
    subgraphs.record(plan, subgraphs.store_subgraph_weights(out, "fp16"))  # If / Loop / Scan bodies
    record_plan(out, plan)
    return out, plan


def emit_fp16(model: onnx.ModelProto, keep_io_types: bool = True) -> tuple[onnx.ModelProto, QuantPlan]:
    """FP16 model and its plan; graph inputs/outputs stay float32 when `keep_io_types`."""
    block = {op: "not supported in FP16 by the converter" for op in float16.DEFAULT_OP_BLOCK_LIST}
    block.update(UNSAFE_IN_FP16)
    early = early_layers(model)
    plan = fp16_plan(model, block, early)
    model = _unshare_small_constants(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about every clamped constant
        out = float16.convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=sorted(block),
                                               node_block_list=sorted(early), disable_shape_infer=False)
    if not _loads(out):  # the converter mistyped a boundary: plain FP16 rather than a broken file
        log.warning("FP16 conversion with the first layers in FP32 failed to load; converting them too")
        plan = fp16_plan(model, block)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = float16.convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=sorted(block))
    record_plan(out, plan)
    return out, plan


def _loads(model: onnx.ModelProto) -> bool:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return True
    except Exception:  # any load failure means the converted graph is not usable
        return False


def _unshare_small_constants(model: onnx.ModelProto, max_elements: int = 1024) -> onnx.ModelProto:
    """Give each node its own copy of small shared initializers (Clip bounds, shapes): the FP16
    converter types a shared constant once, which breaks it for the nodes kept in FP32."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = GraphIndex(m)
    made = Names(m)
    extra = []
    for name, users in g.consumers.items():
        t = g.initializers.get(name)
        if t is None or len(users) < 2 or int(np.prod(t.dims)) > max_elements:
            continue
        for k, node in enumerate(users[1:], start=1):
            copy = onnx.TensorProto()
            copy.CopyFrom(t)
            copy.name = made.fresh(f"{name}__{k}")
            extra.append(copy)
            for j, i in enumerate(node.input):
                if i == name:
                    node.input[j] = copy.name
    m.graph.initializer.extend(extra)
    return m
