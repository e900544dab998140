"""Weight-only INT8 for a model whose quantization nodes cost more bytes than its weights save.

Every activation a static plan quantizes adds a QuantizeLinear / DequantizeLinear pair, a scale and
a zero point, each named after the tensor. On a model with few weights and long tensor names (a
tf2onnx export such as basic-pitch: 37k weights, names of 67 characters on average, 177 quantized
activations) those nodes outweigh what the INT8 weights save, and the file grows (230 KB -> 260
KB). Such a model gets the plan's other form: every weighted layer 'w8' (INT8 weights with a scale
per group, FP32 arithmetic, lowbit.emit.weight_storage), no activation quantized. It is smaller and
closer to FP32, at FP32's speed; the reasons in the plan say why.
"""

from __future__ import annotations

import dataclasses

import onnx
from onnx import TensorProto, numpy_helper

from lowbit.emit.weight_storage import stored_int8_nodes, weight_only_int8
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.names import Names
from lowbit.onnx.ops import RECURRENT_SLOTS, WEIGHTED_OPS, weight_slots
from lowbit.plan.quant_plan import NodePlan, QuantPlan

# The fallback needs the float weights from before the plan-stage fits, kept in memory until emit;
# above this size the weights' savings always exceed the Q/DQ nodes' bytes, so it is not kept.
WEIGHT_ONLY_MAX_BYTES = 64 << 20


def weight_only_plan(model: onnx.ModelProto, plan: QuantPlan, why: str) -> QuantPlan:
    """`plan` with its weighted layers (constant weights) 'w8' where that stores them in fewer bytes
    (the rebuilding nodes and their names included), every other node FP32, Relu / Clip unfolded, no
    tensor quantized. `why` ends each node's reason (the bytes that decided it)."""
    g = GraphIndex(model)
    made = Names(model)
    nodes: dict[str, NodePlan] = {}
    for name, p in plan.nodes.items():
        node = g.nodes.get(name)
        if p.precision == "w8":
            nodes[name] = p  # already weight-only (a recurrent layer: no integer kernel), with its reason
        elif node is not None and p.precision != "fp32" and _w8_pays(node, g, made):
            nodes[name] = NodePlan(name, p.op, "w8", f"INT8-stored weights (scale per group), FP32 arithmetic: {why}")
        elif p.precision == "fp32":
            nodes[name] = p
        elif node is not None and (node.op_type in WEIGHTED_OPS or node.op_type in RECURRENT_SLOTS):
            nodes[name] = NodePlan(name, p.op, "fp32", f"float, with FP32 weights where INT8 storage would not "
                                                       f"be smaller: {why}")
        else:
            nodes[name] = NodePlan(name, p.op, "fp32", f"float (no tensor quantized): {why}")
    return dataclasses.replace(plan, nodes=nodes, tensors={}, folded={})


def _w8_pays(node: onnx.NodeProto, g: GraphIndex, made: Names) -> bool:
    """True if the node's weights, stored w8, take fewer bytes than in FP32 (as the emitter stores them)."""
    if node.op_type in RECURRENT_SLOTS:
        slots, axis = [k for k in RECURRENT_SLOTS[node.op_type] if k < len(node.input)], 0
    elif node.op_type in WEIGHTED_OPS:
        w_idx, _, axis = weight_slots(node, g)
        slots = [] if w_idx is None else [w_idx]
    else:
        return False
    saved = 0
    for k in slots:
        t = g.initializers.get(node.input[k])
        if t is None or t.data_type != TensorProto.FLOAT:
            continue
        inits, rebuild = stored_int8_nodes(t.name, weight_only_int8(numpy_helper.to_array(t), axis), made)
        saved += t.ByteSize() - sum(i.ByteSize() for i in inits) - sum(n.ByteSize() for n in rebuild)
    return saved > 0
