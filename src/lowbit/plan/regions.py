"""Regions of a graph that need a different recipe from the layers around them.

A detector's head ends in arithmetic that joins values of very different scales (box coordinates
in pixels, class scores in [0, 1]) and in tensors whose rare extreme values are the prediction
(the few anchors with a confident score among thousands of background ones). Recipes that serve
a network's body break these: one uint8 grid for boxes and scores rounds every score to zero, and
percentile clipping cuts exactly the confident scores (YOLOv8n: detection F1 0.00 vs FP32 with
both). Three rules, each decided from the graph or from calibration statistics, never from a
model's name:

- the decode region (nodes from which no weighted layer is reachable: anchor grids, box
  arithmetic, the final Concat of boxes and scores) stays in float;
- output-facing tensors (from the last weighted layers to the outputs, feeding no weighted layer)
  keep their full calibrated range: their tails are the predictions;
- a Concat whose inputs' calibrated ranges differ by more than RANGE_RATIO stays in float, so each
  input keeps its own grid;
- elementwise arithmetic (Add, Mul, ...) between the weighted layers runs in integers only where
  that keeps the model's output as close to FP32: a conv network's residual Adds and SiLU gates
  lose little, but GELU polynomials (x * x * x) and layer norms decomposed into Mul / Add chains
  (magika: top-1 agreement 0.04 with them in INT8, 0.95 without) do not survive one uint8 grid
  per step. The plan with them in float replaces the plan with them in INT8 when its simulated
  output SQNR on calibration inputs is higher by more than ELEMENTWISE_MARGIN_DB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import ACTIVATION_OPS, WEIGHTED_OPS

# inputs of one Concat whose ranges differ more than this share no grid: on one uint8 grid the
# narrow input keeps fewer than 255 / 16 ~ 16 levels
RANGE_RATIO = 16.0
# the float-elementwise plan must beat the all-integer one by this much: a CNN whose residual Adds
# cost nothing measurable keeps them on the faster integer kernels
ELEMENTWISE_MARGIN_DB = 1.0
ELEMENTWISE_REASON = ("elementwise arithmetic between the weighted layers kept in float: the plan with it in "
                      "float was closer to FP32 at the output on calibration inputs (plan config "
                      "'elementwise_choice')")

DECODE_REASON = ("decode / post-processing after the last weighted layer (no weighted layer is reachable from "
                 "it): kept in float, where boxes and scores of different scales stay exact at negligible cost")
FULL_RANGE_REASON = ("output-facing: feeds the outputs without a weighted layer in between, so its rare extreme "
                     "values are the predictions; calibrated to its full range, not clipped")


@dataclass
class Regions:
    """Graph-derived recipe choices: nodes kept in float and tensors calibrated to full range."""

    float_nodes: dict[str, str] = field(default_factory=dict)
    full_range: dict[str, str] = field(default_factory=dict)


def _weighted(node) -> bool:
    return node.op_type in WEIGHTED_OPS


def decode_nodes(g: GraphIndex) -> set[str]:
    """Non-weighted nodes from which no weighted node is reachable (the graph's tail on every path)."""
    reaches: set[str] = set()  # nodes with a weighted node at or below them
    for node in reversed(list(g.graph.node)):  # ONNX graphs are topologically sorted
        if _weighted(node) or any(c.name in reaches for o in node.output for c in g.consumers.get(o, [])):
            reaches.add(node.name)
    return {n.name for n in g.graph.node if n.name not in reaches and not _weighted(n)}


def output_facing(g: GraphIndex) -> set[str]:
    """Tensors that reach a graph output through non-weighted nodes only and feed no weighted node."""
    facing = set(g.graph_outputs)
    for node in reversed(list(g.graph.node)):
        if _weighted(node) or not any(o in facing for o in node.output):
            continue
        for i in node.input:
            if i and not any(_weighted(c) for c in g.consumers.get(i, [])):
                facing.add(i)
    return facing


def find_regions(model) -> Regions:
    """The graph-only rules for `model` (an onnx.ModelProto): decode nodes and output-facing tensors."""
    g = GraphIndex(model)
    return Regions({n: DECODE_REASON for n in sorted(decode_nodes(g))},
                   {t: FULL_RANGE_REASON for t in sorted(output_facing(g) - set(g.graph_outputs))})


def mixed_range_concats(model, concats: list[str], ranges: dict[str, tuple[float, float]],
                        ratio: float = RANGE_RATIO) -> dict[str, str]:
    """{Concat node: reason} for the Concats in `concats` whose inputs' calibrated ranges (width,
    from `ranges`: tensor -> (lo, hi)) differ by more than `ratio`; those stay in float."""
    g = GraphIndex(model)
    out: dict[str, str] = {}
    for name in concats:
        widths = [ranges[i][1] - ranges[i][0] for i in g.nodes[name].input if i in ranges]
        widths = [w for w in widths if w > 0.0]
        if len(widths) < 2 or max(widths) <= ratio * min(widths):
            continue
        out[name] = (f"joins inputs whose calibrated ranges differ {max(widths) / min(widths):.0f}x (> {ratio:.0f}x): "
                     "one shared grid would leave the narrow input a few levels; kept in float so each input "
                     "keeps its own grid")
    return out


def concats_to_split(model, selection, stats, config) -> dict[str, str]:
    """{Concat: reason} for the INT8 Concats of `selection` whose inputs' calibrated ranges (from
    `stats`, with `config`'s activation calibration) differ by more than RANGE_RATIO."""
    scheme = config.activations
    concats = [n for n, p in selection.nodes.items() if p.op == "Concat" and p.precision == "int8"]
    ranges = {}
    for t in selection.activations:
        obs = stats.observers.get(t)
        if obs is not None:
            ranges[t] = obs.observed_range() if t in selection.full_range else obs.range(scheme.dtype, scheme.symmetric)
    # a passthrough input shares its source's grid
    for out, src in selection.shared.items():
        root = src
        while root in selection.shared:
            root = selection.shared[root]
        if root in ranges:
            ranges[out] = ranges[root]
    return mixed_range_concats(model, concats, ranges)


def elementwise_nodes(selection) -> dict[str, str]:
    """{node: reason} for the INT8 elementwise nodes of `selection` (the float-elementwise candidate)."""
    return {n: ELEMENTWISE_REASON for n, p in selection.nodes.items()
            if p.precision == "int8" and p.op in ACTIVATION_OPS}


def choose_elementwise(sqnr_int8: float, sqnr_float: float, margin: float = ELEMENTWISE_MARGIN_DB) -> dict:
    """The record of the choice between INT8 and float elementwise arithmetic (see module doc)."""
    return {"float": bool(sqnr_float > sqnr_int8 + margin), "sqnr_int8_db": sqnr_int8,
            "sqnr_float_db": sqnr_float, "margin_db": margin,
            "criterion": "output SQNR of the simulated plan vs FP32 on calibration inputs"}
