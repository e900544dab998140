"""One plan, two recipes: transformer blocks inside a convolutional network (an OCR recognizer's
SVTR neck, a CNN + attention hybrid).

The transformer recipe (lowbit.transformers.patterns) quantizes only linear layers' inputs and
weights and keeps norms, softmax, activations and residual adds in float; the CNN recipe
(lowbit.plan.selection) runs convolutions and the arithmetic between them in integers with percentile
clipping chosen per model. Either alone fails a hybrid: the transformer recipe leaves the
convolutions (PP-OCRv4 recognizer: 60% of the weights) in FP32, the CNN recipe puts one uint8
grid on every step of the attention blocks' decomposed layer norms. So when a graph has attention
blocks *and* a substantial share of its weights outside them, each node gets the recipe of its
region:

- the block region: the blocks' anchors (linear layers, attention MatMuls, softmax, layer norms)
  and every non-weighted node on a path between two anchors that crosses no other weighted layer;
- its linear layers: uint8 input calibrated by MSE, int8 weights, float output (transformer recipe);
- its other nodes: float, with the transformer recipe's reasons;
- everything else: the CNN recipe (lowbit.plan.selection.select), decode / full-range rules included.
"""

from __future__ import annotations

import numpy as np
import onnx

from lowbit.calibration import MSE
from lowbit.calibration.histogram import HistogramObserver, grid
from lowbit.config import QuantConfig
from lowbit.core.granularity import PerTensor
from lowbit.core.qparams import QParams
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import WEIGHTED_OPS, weight_slots
from lowbit.plan.quant_plan import NodePlan, QuantPlan, TensorPlan
from lowbit.plan.selection import Selection, select
from lowbit.transformers.patterns import FLOAT_REASONS, TransformerPatterns, find_patterns

# A transformer graph whose weights lie at least this much outside the block linear layers
# (convolutions, a classifier head) is a hybrid: below it, the transformer recipe alone (a BERT's
# word embeddings are Gathers, not weighted layers, so they do not count).
MIXED_SHARE = 0.2

BLOCK_FLOAT_REASON = ("inside a transformer block (between its linear layers, attention and norms): stays in "
                      "float as the transformer recipe keeps it")
LINEAR_REASON = ("transformer block linear layer ({role}): uint8 input (MSE range), int8 weights, float output "
                 "(transformer recipe of a mixed model)")


def _weight_size(node: onnx.NodeProto, g: GraphIndex) -> int:
    w_idx, _, _ = weight_slots(node, g)
    return int(np.prod(g.initializers[node.input[w_idx]].dims)) if w_idx is not None and node.input[w_idx] in g.initializers else 0


def block_region(model: onnx.ModelProto, patterns: TransformerPatterns | None = None) -> tuple[set[str], dict[str, str]]:
    """(block linear layers, {other block node: reason}) of `model` (see module doc). Anchors are
    linear layers, attention MatMuls, the softmaxes that feed them, layer norms and outlier paths;
    a linear layer belongs to a block when a non-weighted anchor (attention, softmax, norm) is
    reachable from it without crossing another weighted layer, so a classifier head after the
    convolutions keeps the CNN recipe."""
    g = GraphIndex(model)
    p = patterns or find_patterns(model)
    attention = set(p.attention)
    softmax = {s for s in p.softmax if any(n.name in attention for n in _below(g, g.nodes[s].output[0]))}
    # layers with constant weights bound the regions; attention MatMuls (two activations) do not
    weighted = {n.name for n in g.graph.node if n.op_type in WEIGHTED_OPS and weight_slots(n, g)[0] is not None}
    anchors = set(p.linear) | attention | softmax | set(p.layernorm) | set(p.outlier)
    order = list(g.graph.node)
    below: dict[str, set[str]] = {}  # anchors reachable downwards, passing no weighted layer
    for node in reversed(order):
        got: set[str] = set()
        for c in (c for o in node.output for c in g.consumers.get(o, [])):
            got |= ({c.name} if c.name in anchors else set()) | (below[c.name] if c.name not in weighted else set())
        below[node.name] = got
    above: dict[str, set[str]] = {}
    for node in order:
        got = set()
        for n in (g.producer[i] for i in node.input if i in g.producer):
            got |= ({n.name} if n.name in anchors else set()) | (above[n.name] if n.name not in weighted else set())
        above[node.name] = got
    soft = anchors - weighted
    linears = {n for n in p.linear if (below[n] | above[n]) & soft}
    # an FFN down-projection right before a head (no norm in between) is joined to its up-projection
    linears |= {n for n in p.linear if _fed_by(g, g.nodes[n].input[0], weighted) & linears}
    floats: dict[str, str] = {}
    for node in order:
        name = node.name
        if name in weighted:
            continue
        if name in anchors or (below[name] & anchors and above[name] & anchors):
            floats[name] = FLOAT_REASONS.get(p.role_of(name) or "", BLOCK_FLOAT_REASON)
    return linears, floats


def _fed_by(g: GraphIndex, tensor: str, weighted: set[str], depth: int = 6) -> set[str]:
    """Weighted layers `tensor` is computed from through elementwise steps, not crossing a residual
    Add (two activation inputs): an FFN's activation leads to its up-projection, a residual stream
    to everything before it."""
    found, frontier = set(), [tensor]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            n = g.producer.get(t)
            if n is None:
                continue
            if n.name in weighted:
                found.add(n.name)
            elif not (n.op_type == "Add" and all(g.constant(i) is None for i in n.input)):
                nxt.extend(i for i in n.input if g.constant(i) is None)
        frontier = nxt
    return found


def _below(g: GraphIndex, tensor: str, depth: int = 6) -> list[onnx.NodeProto]:
    """Nodes within `depth` steps below `tensor`."""
    found, frontier = [], [tensor]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for c in g.consumers.get(t, []):
                found.append(c)
                nxt.extend(c.output)
        frontier = nxt
    return found


def is_hybrid(model: onnx.ModelProto, patterns: TransformerPatterns | None = None,
              share: float = MIXED_SHARE) -> bool:
    """True if `model` has transformer blocks and at least `share` of its layer weights outside
    the blocks' linear layers."""
    p = patterns or find_patterns(model)
    if not p.is_transformer():
        return False
    g = GraphIndex(model)
    linears, _ = block_region(model, p)
    sizes = {n.name: _weight_size(n, g) for n in g.graph.node if n.op_type in WEIGHTED_OPS}
    total = sum(sizes.values())
    return total > 0 and sum(s for n, s in sizes.items() if n not in linears) >= share * total


def mixed_selection(model: onnx.ModelProto, config: QuantConfig, costs: dict | None = None,
                    keep: dict[str, str] | None = None) -> Selection:
    """The CNN selection of `model` with the transformer blocks' nodes given the transformer
    recipe: block nodes float, block linear layers with quantized inputs and float outputs."""
    g = GraphIndex(model)
    linears, floats = block_region(model)
    sel = select(model, config, costs, keep={**floats, **(keep or {})})
    p = find_patterns(model)
    for name, why in floats.items():  # the record names the recipe, not only the missing kernel
        if sel.nodes[name].precision == "fp32" and not sel.nodes[name].reason.startswith("kept in float by"):
            sel.nodes[name] = NodePlan(name, sel.nodes[name].op, "fp32", why)
    for name in linears:
        if sel.nodes[name].precision != "int8":
            continue
        sel.nodes[name] = NodePlan(name, sel.nodes[name].op, "int8", LINEAR_REASON.format(role=p.linear_role[name]))
        out = g.nodes[name].output[0]
        for c in g.consumers.get(out, []):  # a Relu folded into a block linear would quantize its output
            if sel.folded.pop(c.name, None) is not None:
                sel.nodes[c.name] = NodePlan(c.name, c.op_type, "fp32", BLOCK_FLOAT_REASON)
        if not any(sel.nodes[c.name].precision == "int8" for c in g.consumers.get(out, [])):
            sel.activations = [t for t in sel.activations if t != out]
    sel.full_range = {t: why for t, why in sel.full_range.items() if t in sel.activations}
    return sel


def block_inputs(model: onnx.ModelProto, selection: Selection) -> list[str]:
    """The quantized input tensors of the INT8 block linear layers of `selection`."""
    g = GraphIndex(model)
    linears, _ = block_region(model)
    out = []
    for n in linears:
        t = g.nodes[n].input[0]
        while t in selection.shared:  # a Reshape before the layer moves its source's integers
            t = selection.shared[t]
        if selection.nodes[n].precision == "int8" and t in selection.activations:
            out.append(t)
    return list(dict.fromkeys(out))


def with_mse_ranges(plan: QuantPlan, stats, config: QuantConfig, tensors: list[str]) -> QuantPlan:
    """`plan` with the activations `tensors` (block linear inputs) on MSE ranges from their
    histograms, as the transformer recipe calibrates them; tensors sharing their grid follow."""
    scheme, mse = config.activations, MSE()
    for t in tensors:
        obs = stats.observers.get(t)
        if t not in plan.tensors or not isinstance(obs, HistogramObserver) or obs.lo == obs.hi:
            continue
        lo, hi = mse.choose(obs, *grid(scheme.dtype, scheme.symmetric))
        q = QParams.from_range(lo, hi, scheme.dtype, PerTensor(), scheme.symmetric, scheme.narrow)
        plan.tensors[t] = TensorPlan(t, "activation", q, (float(lo), float(hi)), "mse")
    for name, tp in list(plan.tensors.items()):
        root = tp.method[len("shared:"):] if tp.method.startswith("shared:") else None
        if root in tensors and root in plan.tensors:
            base = plan.tensors[root]
            plan.tensors[name] = TensorPlan(name, "activation", base.qparams, base.calibrated_range, tp.method)
    return plan
