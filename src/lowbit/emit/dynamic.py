"""Dynamic INT8 through ONNX Runtime's quantize_dynamic: int8 weights, activations quantized at
run time. Only MatMul is quantized that way: ONNX Runtime's dynamic Conv kernels are several times
slower than FP32 on CPU. Conv and LSTM / GRU / RNN weights are stored as INT8 instead ('w8': INT8 with a scale per group,
turned back into FP32 once at load; the first layers stay FP32), so a CNN still gets INT8's size,
at FP32's speed. Gemm
layers with constant weights are first rewritten as MatMul + Add so that torch Linear layers
(exported as Gemm) are covered too."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from lowbit.core.dtypes import dtype_by_name
from lowbit.core.granularity import PerChannel, PerTensor
from lowbit.core.qparams import QParams
from lowbit.emit import subgraphs
from lowbit.emit.fp16 import early_layers
from lowbit.emit.metadata import record_plan
from lowbit.emit.weight_storage import stored_int8_nodes, weight_only_int8
from lowbit.load.prepare import drop_inferred_shapes, fingerprint
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.names import Names
from lowbit.onnx.ops import RECURRENT_SLOTS, why_float
from lowbit.package import __version__
from lowbit.plan.quant_plan import NodePlan, QuantPlan, TensorPlan
from lowbit.target.cpu import target_traits

log = logging.getLogger(__name__)


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite Gemm(A, const B, C) with alpha = beta = 1 and no transA as MatMul(A, B') + C."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = GraphIndex(m)
    made = Names(m)
    nodes = []
    for node in m.graph.node:
        b = g.constant(node.input[1]) if node.op_type == "Gemm" else None
        if (b is None or g.attr(node, "transA", 0) or g.attr(node, "alpha", 1.0) != 1.0
                or g.attr(node, "beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = b.T if g.attr(node, "transB", 0) else b
        w_name = made.fresh(f"{node.input[1]}_matmul")
        m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = made.fresh(f"{node.output[0]}_matmul") if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=node.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=made.fresh(f"{node.name}_bias")))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


class _NoPreprocessAdvice(logging.Filter):
    """ONNX Runtime's quantizer advises its own pre-processing on every call, through the root
    logger ("Please consider to run pre-processing before quantization"): lowbit has inferred the
    shapes itself, so on the user's terminal the advice only misleads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def emit_dynamic(model: onnx.ModelProto, per_channel: bool = True, target: str = "auto",
                 algorithm_choices: dict | None = None) -> tuple[onnx.ModelProto, QuantPlan]:
    """Dynamic INT8 model and its plan. On CPUs whose u8 x s8 kernels saturate (see
    lowbit.target.cpu) the weights use ONNX Runtime's reduced 7-bit range, which is exact there.
    `algorithm_choices`: what was done to `model`'s weights before (recorded in the plan)."""
    reduce_range = target_traits(target).u8s8_saturates
    src = onnx.shape_inference.infer_shapes(gemm_to_matmul(model))
    with tempfile.TemporaryDirectory(prefix="lowbit-dyn-") as tmp:
        inp, outp = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(src, str(inp))
        advice = _NoPreprocessAdvice()
        logging.getLogger().addFilter(advice)
        try:
            quantize_dynamic(inp, outp, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().removeFilter(advice)
        out = onnx.load(str(outp))
    plan = _plan_from_output(src, out, reduce_range)
    out = drop_inferred_shapes(_conv_weights_in_int8(out, plan))
    # quantize_dynamic does not reach into If / Loop / Scan bodies: their weights are stored as w8
    subgraphs.record(plan, subgraphs.store_subgraph_weights(out, "w8"))
    plan.decisions.reduce_range = reduce_range
    plan.decisions.algorithm_choices = algorithm_choices
    record_plan(out, plan)
    return out, plan


# Weights stored as INT8 + scales and computed in FP32: Conv (dynamic Conv kernels are slow) and the
# recurrent layers' input and recurrence weights W, R (no dynamic kernel exists for them)
STORED_SLOTS = {"Conv": (1,), **RECURRENT_SLOTS}


def _stored_weights(model: onnx.ModelProto, g: GraphIndex, early: dict[str, str]
                    ) -> Iterator[tuple[onnx.NodeProto, str, onnx.TensorProto]]:
    """(node, weight name, initializer) of each weight the preset stores INT8: a constant FP32
    weight (STORED_SLOTS) read by that node alone, outside the network's first layers."""
    for node in model.graph.node:
        slots = STORED_SLOTS.get(node.op_type, ()) if node.name not in early else ()
        for w_name in (node.input[k] for k in slots if k < len(node.input)):
            init = g.initializers.get(w_name)
            if init is not None and init.data_type == onnx.TensorProto.FLOAT and len(g.consumers.get(w_name, [])) == 1:
                yield node, w_name, init


def stored_convs(model: onnx.ModelProto) -> list[str]:
    """The Conv nodes whose weights the int8-dynamic preset stores INT8 (`_conv_weights_in_int8`)."""
    return [node.name for node, _, _ in _stored_weights(model, GraphIndex(model), early_layers(model))
            if node.op_type == "Conv"]


def _conv_weights_in_int8(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """Each Conv's and recurrent layer's own constant FP32 weights stored as INT8 + scales
    (lowbit.emit.weight_storage), except in the network's first layers."""
    g = GraphIndex(model)
    early = early_layers(model)  # FP32, as the fp16 preset keeps them: rounding there is amplified most
    head: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    made = Names(model)
    for node, w_name, init in list(_stored_weights(model, g, early)):  # listed: the graph grows below
        inits, nodes = stored_int8_nodes(w_name, weight_only_int8(numpy_helper.to_array(init), 0), made)
        model.graph.initializer.extend(inits)
        head.extend(nodes)
        replaced.add(w_name)
        if node.name in plan.nodes:
            plan.nodes[node.name].precision = "w8"
            plan.nodes[node.name].reason = (
                "INT8-stored weights (scale per group), float arithmetic: ONNX Runtime's dynamic Conv kernels "
                "are slower than FP32 on CPU" if node.op_type == "Conv" else
                f"INT8-stored weights (scale per group), float arithmetic: ONNX Runtime has no dynamic "
                f"{node.op_type} kernel")
    for name, why in early.items():
        if name in plan.nodes and plan.nodes[name].op == "Conv":
            plan.nodes[name].reason = why
    if replaced:
        kept = [t for t in model.graph.initializer if t.name not in replaced]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        nodes = head + list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return model


def _plan_from_output(src: onnx.ModelProto, out: onnx.ModelProto, reduce_range: bool = False) -> QuantPlan:
    """Read back what quantize_dynamic did: which MatMul weights it quantized, with what scales."""
    plan = QuantPlan(precision="int8-dynamic", model_fingerprint=fingerprint(src), lowbit_version=__version__,
                     config={"precision": "int8-dynamic", "per_channel": True})
    o = GraphIndex(out)
    g = GraphIndex(src)
    for node in src.graph.node:
        if not any(g.is_float(x) for x in node.output):
            continue
        w = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else None
        qname = f"{w}_quantized" if w else None
        if qname and qname in o.initializers:
            q = o.constant(qname)
            scale, zp = o.constant(f"{w}_scale"), o.constant(f"{w}_zero_point")
            gran = PerChannel(q.ndim - 1) if np.asarray(scale).size > 1 else PerTensor()
            dt = dtype_by_name(("int" if q.dtype == np.int8 else "uint") + ("7" if reduce_range else "8"))
            plan.tensors[w] = TensorPlan(w, "weight", QParams(dt, gran, np.asarray(scale, np.float32),
                                                              np.asarray(zp, np.int64)), method="minmax")
            plan.nodes[node.name] = NodePlan(node.name, node.op_type, "int8-dynamic",
                                             "int8 weights, activations quantized at run time")
        else:
            reason = ("dynamic quantization covers MatMul only (dynamic Conv is slower than FP32 on CPU)"
                      if node.op_type == "Conv" else why_float(node.op_type))
            plan.nodes[node.name] = NodePlan(node.name, node.op_type, "fp32", reason)
    return plan
