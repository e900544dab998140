"""Per-layer precision mixes derived from one calibrated INT8 plan.

A layer can be 'int8' (as calibrated), 'fp16' (FP16 weights, float arithmetic: half the size of
FP32 at FP32's fidelity and speed on CPUs without FP16 arithmetic), 'w8' (weight-only INT8: the
weight stored on a symmetric INT8 grid with a scale per group of 32, float arithmetic; about a quarter of FP32's size,
FP32's speed, and of INT8's error only the weights' share, which on CNNs is the small one) or
'fp32'; 'int8-block' for linear layers offered in `choices` (MatMulNBits, 8-bit blocks). Activation Q/DQ
pairs are kept only where an INT8 layer reads or writes them, so a float layer adds no
quantization noise of its own. `choices` adds block-wise weight options ({node: {precision:
TensorPlan}}, e.g. 'int4' MatMulNBits weights or an 'int8' / 'int4' GatherBlockQuantized embedding
table, `lowbit.transformers.pipeline.block_choices`): weight-only, the layer's input stays float.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from lowbit.core.dtypes import int4, int8
from lowbit.core.granularity import PerChannel, PerGroup
from lowbit.core.qparams import QParams
from lowbit.emit.int4 import check_linear_gemm
from lowbit.emit.weight_storage import w8_layout
from lowbit.errors import ConfigError
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import PASSTHROUGH_OPS, weight_slots
from lowbit.plan.planner import bias_plan
from lowbit.plan.quant_plan import NodePlan, QuantPlan, TensorPlan


def layer_nodes(plan: QuantPlan) -> list[str]:
    """The layers a precision can be chosen for: nodes the INT8 plan runs in integers, except
    pure data movement (which follows its neighbours)."""
    return [n.name for n in plan.nodes.values() if n.precision == "int8" and n.op not in PASSTHROUGH_OPS]


def mixed_plan(model: onnx.ModelProto, base: QuantPlan, precisions: dict[str, str],
               g: GraphIndex | None = None, own_outputs: bool = True,
               choices: dict[str, dict[str, TensorPlan]] | None = None) -> QuantPlan:
    """`base` (an INT8 plan of `model`) with each layer in `precisions` moved to that precision.

    With `own_outputs` (deployable mixes) an INT8 layer quantizes its inputs and its output, so
    ONNX Runtime fuses it into one integer kernel. Without it (sensitivity analysis) a layer owns
    only its weights and inputs: 'only this layer quantized' then adds no noise that belongs to
    the next layer's input.

    >>> mixed = mixed_plan(model, plan, {"/features.0/Conv": "fp32"})
    """
    g = g or GraphIndex(model)
    choices = choices or {}
    nodes = {k: NodePlan(v.name, v.op, v.precision, v.reason) for k, v in base.nodes.items()}
    blocks: dict[str, TensorPlan] = {}
    block_nodes: set[str] = set()
    narrower: dict[str, TensorPlan] = {}  # integer layers whose weights take a narrower grid (w4a8)
    for name, p in precisions.items():
        if name in nodes and p in choices.get(name, {}) and not isinstance(choices[name][p].qparams.granularity,
                                                                           PerGroup):
            narrower[name] = choices[name][p]
            nodes[name].reason = f"{p}: 4-bit weights, 8-bit activations, chosen by the precision search"
        elif name in nodes and p in choices.get(name, {}):
            blocks[choices[name][p].name] = choices[name][p]
            block_nodes.add(name)
            nodes[name].precision = p
            nodes[name].reason = f"{p}: block-wise weights, chosen by the precision search"
        elif name in nodes and p != "int8" and nodes[name].precision == "int8":
            nodes[name].precision = p
            nodes[name].reason = f"{p}: chosen by the precision search"
    layers = {k for k, v in nodes.items() if v.precision == "int8" and v.op not in PASSTHROUGH_OPS
              and k not in block_nodes}
    need: set[str] = set()
    for name in layers:
        node = g.nodes[name]
        need.update(i for i in node.input if i)
        if own_outputs:
            for out in node.output:
                need.add(out)
                need.update(c.output[0] for c in g.consumers.get(out, []) if c.name in base.folded)
    # a Relu/Clip stays folded only behind an INT8 producer whose output is quantized
    folded = {act: prod for act, prod in base.folded.items() if prod in layers and g.nodes[act].output[0] in need}
    for act in base.folded:
        if act not in folded:
            nodes[act].precision, nodes[act].reason = "fp32", "its producer's output runs in float"
    # data movement stays integer only next to an integer layer
    for node in reversed(list(g.graph.node)):
        if nodes.get(node.name) is None or node.op_type not in PASSTHROUGH_OPS or nodes[node.name].precision != "int8":
            continue
        if node.output[0] in need:
            need.add(node.input[0])
        else:
            nodes[node.name].precision, nodes[node.name].reason = "fp32", "no integer neighbour"
    plan = QuantPlan(precision=base.precision, nodes=nodes, folded=folded, config=dict(base.config),
                     observed=dict(base.observed), model_fingerprint=base.model_fingerprint,
                     lowbit_version=base.lowbit_version, decisions=dataclasses.replace(base.decisions))
    plan.tensors = {k: t for k, t in base.tensors.items() if k in need and k not in blocks} | blocks
    for name, w in narrower.items():
        _narrow_weights(plan, g, name, w)
    return plan


def _narrow_weights(plan: QuantPlan, g: GraphIndex, name: str, w: TensorPlan) -> None:
    """Layer `name` keeps its integer kernel with weights on `w`'s grid; its int32 bias follows the
    new weight scale (bias scale = input scale x weight scale)."""
    node = g.nodes[name]
    w_idx, b_idx, _ = weight_slots(node, g)
    x = plan.tensors.get(node.input[0])
    if w_idx is None or x is None or node.input[w_idx] != w.name:
        return
    plan.tensors[w.name] = w
    if b_idx is not None and node.input[b_idx] in plan.tensors:
        b_name = node.input[b_idx]
        plan.tensors[b_name] = bias_plan(b_name, g.constant(b_name), x.qparams.scale, w)


def four_bit_weight_choices(model: onnx.ModelProto, plan: QuantPlan, min_weights: int = 4096
                            ) -> dict[str, dict[str, TensorPlan]]:
    """{layer: {'w4': TensorPlan}}: 4-bit symmetric per-channel weights for each INT8 Conv / Gemm of
    `plan` with at least `min_weights` weights. They run on the same int8 kernels (the emitter stores
    INT4 and Casts, folded at load), so for the search they cost nothing in speed and halve the bytes."""
    g = GraphIndex(model)
    out: dict[str, dict[str, TensorPlan]] = {}
    for name in layer_nodes(plan):
        node = g.nodes[name]
        if node.op_type not in ("Conv", "Gemm"):
            continue
        w_idx, _, axis = weight_slots(node, g)
        w = g.constant(node.input[w_idx]) if w_idx is not None else None
        if w is None or w.size < min_weights or node.input[w_idx] not in plan.tensors:
            continue
        q = QParams.for_tensor(w, int4, PerChannel(axis), True, True)
        out[name] = {"w4": TensorPlan(node.input[w_idx], "weight", q, (float(w.min()), float(w.max())), "rtn")}
    return out


def linear_block_choices(model: onnx.ModelProto, plan: QuantPlan, group: int = 32
                         ) -> dict[str, dict[str, TensorPlan]]:
    """{layer: {'int8-block': TensorPlan}}: 8-bit weights in blocks of `group` for each INT8 Gemm /
    MatMul of `plan` with a constant weight whose K divides into blocks, run by MatMulNBits in int8
    with its input quantized per block at run time. For a batch-1 classifier that is 2.5x faster
    than FP32's Gemm on AVX2 and far closer to FP32 than a per-tensor static INT8 input."""
    g = GraphIndex(model)
    out: dict[str, dict[str, TensorPlan]] = {}
    for name in layer_nodes(plan):
        node = g.nodes[name]
        w = g.constant(node.input[1]) if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 else None
        if w is None or w.ndim != 2:
            continue
        if node.op_type == "Gemm":
            try:
                check_linear_gemm(node, g)
            except ConfigError:
                continue
        axis = 1 if node.op_type == "Gemm" else 0  # the reduction axis: (N, K) under transB, (K, N)
        if w.shape[axis] % group or w.shape[axis] <= group:
            continue
        q = QParams.for_tensor(w, int8, PerGroup(axis, group), True, True)
        out[name] = {"int8-block": TensorPlan(node.input[1], "weight", q, (float(w.min()), float(w.max())), "rtn")}
    return out


def plan_size_bytes(model: onnx.ModelProto, plan: QuantPlan, g: GraphIndex | None = None) -> int:
    """Bytes of weights the mix stores: 1 per INT8 weight, 2 per FP16, 4 per FP32; block-wise
    weights their bits / 8 per weight plus one FP32 scale per block; a 'w8' layer 1 per weight plus
    an FP16 scale per group (`lowbit.emit.weight_storage`), its other constants FP32."""
    g = g or GraphIndex(model)
    per = {"int8": 1, "fp16": 2}
    total = 0
    owner: dict[str, str] = {}
    for node in g.graph.node:
        for i in node.input:
            if i in g.initializers:
                owner.setdefault(i, node.name)
    for name, t in g.initializers.items():
        n = int(np.prod(t.dims)) if t.dims else 1
        node = plan.nodes.get(owner.get(name, ""))
        if name in plan.tensors and plan.tensors[name].role == "bias":
            total += 4 * n
        elif name in plan.tensors:
            q = plan.tensors[name].qparams
            stored = (n + 1) // 2 if q.dtype.bits <= 4 else n  # 4-bit packed in pairs; 5-8 bits in a byte
            total += stored + (4 * int(np.size(q.scale)) if isinstance(q.granularity, PerGroup) else 0)
        elif node is not None and node.precision == "w8" and name == _weight_of(g, node.name):
            _, scales = w8_layout(tuple(t.dims), weight_slots(g.nodes[node.name], g)[2])
            total += n + 2 * int(np.prod([abs(d) if d != -1 else t.dims[k] for k, d in enumerate(scales)]))
        else:
            total += per.get(node.precision if node else "fp32", 4) * n
    return total


def _weight_of(g: GraphIndex, node_name: str) -> str | None:
    node = g.nodes[node_name]
    w_idx = weight_slots(node, g)[0]
    return node.input[w_idx] if w_idx is not None else None
