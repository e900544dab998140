"""Decide, before calibration, which nodes run in integers and which tensors need Q/DQ.

The result names the activation tensors to observe, so calibration collects only what the plan
will use.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from lowbit.config import QuantConfig
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import (ACTIVATION_OPS, FOLDABLE_ACTIVATIONS, PASSTHROUGH_OPS, RECURRENT_SLOTS, WEIGHTED_OPS,
                             clip_bounds, weight_slots, why_float)
from lowbit.plan.quant_plan import NodePlan
from lowbit.plan.regions import find_regions
from lowbit.target.latency_choice import MARGIN


@dataclass
class Selection:
    """Node precisions and the tensors that follow from them."""

    nodes: dict[str, NodePlan] = field(default_factory=dict)
    # activation tensors to quantize with their own calibrated range
    activations: list[str] = field(default_factory=list)
    # passthrough outputs that reuse their input's quantization: output -> input
    shared: dict[str, str] = field(default_factory=dict)
    # Relu/Clip node -> the quantized node whose output it is folded into
    folded: dict[str, str] = field(default_factory=dict)
    # float graph outputs observed for the parity tolerance
    observed: list[str] = field(default_factory=list)
    # layers kept in float for speed -> the timings that decided it (plan.decisions.layer_costs)
    layer_costs: dict[str, dict] = field(default_factory=dict)
    # activations calibrated to their full range (not clipped) -> why (lowbit.plan.regions)
    full_range: dict[str, str] = field(default_factory=dict)

    @property
    def to_observe(self) -> list[str]:
        return list(dict.fromkeys(self.activations + self.observed))


def _kept_float(name: str, patterns: tuple[str, ...]) -> str | None:
    for p in patterns:
        if fnmatch.fnmatchcase(name, p):
            return p
    return None


def _recurrent(node, g: GraphIndex) -> tuple[str, str]:
    """LSTM / GRU / RNN have no integer kernel in ONNX Runtime: float arithmetic, but their constant
    FP32 W and R stored INT8 with a scale per group (`w8`, lowbit.emit.weight_storage), as
    int8-dynamic stores them. Often most of a speech or OCR model's weights."""
    consts = [node.input[k] for k in RECURRENT_SLOTS[node.op_type]
              if k < len(node.input) and g.initializers.get(node.input[k]) is not None
              and g.initializers[node.input[k]].data_type == TensorProto.FLOAT]
    if not consts:
        return "fp32", why_float(node.op_type)
    return "w8", (f"INT8-stored W and R (scale per group of 32), float arithmetic: ONNX Runtime has no integer "
                  f"{node.op_type} kernel")


def _float_inputs_ok(node, g: GraphIndex) -> bool:
    """True if every data input is float32 (quantizing int or fp16 paths makes no sense)."""
    return all(g.is_float(i) or g.constant(i) is not None for i in node.input if i)


# Layers kept in float for speed may hold at most this share of the weights: the latency objective
# buys speed where it costs almost no size (a 3-channel first convolution), never 4x on a big layer.
FLOAT_WEIGHT_BUDGET = 0.01


def slow_int8_layers(model, costs: dict, budget: float = FLOAT_WEIGHT_BUDGET) -> dict[str, str]:
    """{node: reason} for the layers to keep in float for speed (see `keep_float_for_speed`)."""
    return keep_float_for_speed(model, costs, budget)[0]


def keep_float_for_speed(model, costs: dict, budget: float = FLOAT_WEIGHT_BUDGET
                         ) -> tuple[dict[str, str], dict[str, dict]]:
    """({node: reason}, {node: timings}) for the layers to keep in float for speed: INT8 slower
    than FP32 beyond measurement noise (lowbit.target.latency_choice), chosen greedily by time saved per
    weight until `budget` of all weights is used. Layers within noise go the default way (INT8).

    The reasons hold no measured numbers (they are recorded in the model file, which must not vary
    with timing noise); the timings are returned apart for plan.decisions.layer_costs."""
    g = GraphIndex(model)

    def n_weights(name: str) -> int:
        node = g.nodes[name]
        w_idx, _, _ = weight_slots(node, g)
        return int(np.prod(g.initializers[node.input[w_idx]].dims)) if w_idx is not None else 0

    total = sum(n_weights(n) for n in costs if n in g.nodes) or 1
    ratios = {c.node: c.int8_ratio() for c in costs.values() if c.node in g.nodes}
    slow = [costs[n] for n, r in ratios.items() if r.clearly_slower]
    # ties broken by name: the same timings give the same choice whatever the dict order
    slow.sort(key=lambda c: (-(c.int8_ms - c.fp32_ms) / max(n_weights(c.node), 1), c.node))
    chosen, evidence, used = {}, {}, 0
    for c in slow:
        w = n_weights(c.node)
        if used + w > budget * total:
            continue
        used += w
        chosen[c.node] = (f"INT8 kernel slower than FP32 on this machine beyond measurement noise and a "
                          f"{100 * MARGIN:.0f}% margin (timings in plan config 'layer_costs'), and the layer holds "
                          f"{100 * w / total:.2f}% of the weights: kept in float for speed (objective 'size' "
                          "overrides)")
        evidence[c.node] = {**ratios[c.node].to_dict(), "weight_share": round(w / total, 6)}
    return chosen, evidence


def select(model, config: QuantConfig, costs: dict | None = None,
           keep: dict[str, str] | None = None) -> Selection:
    """Choose node precisions for a static INT8 plan of `model` (an onnx.ModelProto).

    `costs` ({node: LayerCost}, measured by lowbit.target.layer_costs) keeps layers whose INT8 kernel is
    slower than FP32 on this machine in float when the objective is latency. `keep` ({node:
    reason}) keeps more nodes in float (choices made from calibration statistics, lowbit.plan.regions).
    The decode region after the last weighted layer stays in float (lowbit.plan.regions).
    """
    g = GraphIndex(model)
    sel = Selection()
    regions = find_regions(model)
    keep = {**regions.float_nodes, **(keep or {})}
    wanted = set(config.op_types) if config.op_types is not None else None
    slow, sel.layer_costs = (keep_float_for_speed(model, costs) if costs and config.objective == "latency"
                             else ({}, {}))
    outputs = set(g.graph_outputs)

    def decide(node) -> tuple[str, str]:
        op = node.op_type
        pattern = _kept_float(node.name, config.keep_float)
        if pattern:
            return "fp32", f"kept in float by keep_float pattern '{pattern}'"
        if wanted is not None and op not in wanted and op not in PASSTHROUGH_OPS | FOLDABLE_ACTIVATIONS:
            return "fp32", f"{op} is not in the requested op_types"
        if op in RECURRENT_SLOTS:
            return _recurrent(node, g)
        if op not in WEIGHTED_OPS | ACTIVATION_OPS:
            return "fp32", why_float(op)
        if not _float_inputs_ok(node, g):
            return "fp32", "its inputs are not float32"
        if op == "Gemm" and (g.attr(node, "transA", 0) or g.attr(node, "alpha", 1.0) != 1.0):
            return "fp32", "Gemm with transA or alpha != 1 has no integer kernel"
        if node.name in slow:
            return "fp32", slow[node.name]
        if node.name in keep:
            return "fp32", keep[node.name]
        return "int8", "integer kernel"

    for node in g.graph.node:
        precision, reason = decide(node)
        sel.nodes[node.name] = NodePlan(node.name, node.op_type, precision, reason)

    quantized = {n for n, p in sel.nodes.items() if p.precision == "int8"}

    # Relu / Clip(0, hi) right after a quantized layer: the output grid clips, the node goes.
    for node in g.graph.node:
        if node.op_type not in FOLDABLE_ACTIVATIONS or _kept_float(node.name, config.keep_float):
            continue
        src = g.producer.get(node.input[0])
        lo, _ = clip_bounds(node, g)
        if (src is not None and src.name in quantized and src.op_type in WEIGHTED_OPS | {"Add"}
                and lo == 0.0 and len(g.consumers.get(node.input[0], [])) == 1
                and node.input[0] not in outputs and node.output[0] not in outputs):
            sel.folded[node.name] = src.name
            sel.nodes[node.name] = NodePlan(node.name, node.op_type, "folded",
                                            f"folded into the quantized output of {src.name}")

    def out_name(node) -> str:
        """The tensor a quantized node's output is known by after folding."""
        out = node.output[0]
        for c in g.consumers.get(out, []):
            if c.name in sel.folded:
                return c.output[0]
        return out

    # Passthrough ops run on integers when a quantized node consumes their output (reverse order
    # so chains such as Flatten -> Reshape -> Gemm resolve in one pass).
    for node in reversed(list(g.graph.node)):
        if node.op_type not in PASSTHROUGH_OPS or _kept_float(node.name, config.keep_float):
            continue
        consumers = g.consumers.get(node.output[0], [])
        if (node.output[0] not in outputs and g.is_float(node.input[0])
                and any(sel.nodes[c.name].precision == "int8" for c in consumers)):
            sel.nodes[node.name] = NodePlan(node.name, node.op_type, "int8", "moves integers with its input's scale")
            sel.shared[node.output[0]] = node.input[0]

    activations: list[str] = []
    for node in g.graph.node:
        plan = sel.nodes[node.name]
        if plan.precision != "int8":
            continue
        w_idx, b_idx, _ = weight_slots(node, g) if node.op_type in WEIGHTED_OPS else (None, None, 0)
        for k, name in enumerate(node.input):
            if not name or k in (w_idx, b_idx) or g.constant(name) is not None:
                continue
            if name in sel.shared:
                continue  # reuses its source's parameters
            if not g.is_float(name):
                continue  # shape / index inputs (a Reshape's int64 shape) stay as they are
            activations.append(name)
        if node.op_type not in PASSTHROUGH_OPS:
            out = out_name(node)
            if out not in outputs:
                activations.append(out)
    sel.activations = list(dict.fromkeys(activations))
    # a shared tensor's source must itself be quantized
    for out, src in list(sel.shared.items()):
        root = src
        while root in sel.shared:
            root = sel.shared[root]
        if root not in sel.activations:
            sel.activations.append(root)
    sel.observed = [o for o in g.graph_outputs if g.is_float(o)]
    sel.full_range = {t: why for t, why in regions.full_range.items() if t in sel.activations}
    return sel
