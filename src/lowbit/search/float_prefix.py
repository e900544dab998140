"""The first layers of a mixed model in float where that is clearly closer to FP32.

An error made in a network's first layers is carried and amplified by every later one; the
first convolutions of a recognizer are also its smallest (PP-OCRv4's first six hold 0.15% of the
weights). So the plans with the first k weighted layers in float (k while they hold at most
PREFIX_BUDGET of the weights) are simulated on calibration inputs, and the one with the highest
output SQNR replaces the all-INT8 plan when it is higher by more than MARGIN_DB. As the FP16
preset's float head, but chosen by measurement rather than by graph shape.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import onnx

from lowbit.data import Batch
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import weight_slots
from lowbit.plan.clipping import SAMPLES, simulated_sqnr
from lowbit.plan.quant_plan import QuantPlan
from lowbit.search.mixed import mixed_plan

PREFIX_BUDGET = 0.01
MARGIN_DB = 1.0
REASON = ("one of the first weighted layers (at most {budget:.0%} of the weights): kept in float because the plan "
          "with them in float was closer to FP32 at the output on calibration inputs (plan config 'float_prefix')")


def prefix_layers(model: onnx.ModelProto, plan: QuantPlan, budget: float = PREFIX_BUDGET) -> list[str]:
    """The INT8 weighted layers of `plan` from the graph's start while they hold <= `budget` of all
    layer weights (graph order: ONNX graphs are topologically sorted)."""
    g = GraphIndex(model)
    sizes = {}
    for node in g.graph.node:
        w_idx, _, _ = weight_slots(node, g) if plan.nodes.get(node.name) else (None, None, 0)
        if w_idx is not None and g.constant(node.input[w_idx]) is not None:
            sizes[node.name] = int(np.prod(g.constant(node.input[w_idx]).shape))
    total, used, out = sum(sizes.values()) or 1, 0, []
    for name, size in sizes.items():
        if plan.nodes[name].precision != "int8" or used + size > budget * total:
            break
        used += size
        out.append(name)
    return out


def choose_float_prefix(model: onnx.ModelProto, plan: QuantPlan, calib: Iterable[Batch],
                        budget: float = PREFIX_BUDGET, margin: float = MARGIN_DB,
                        known_db: float | None = None) -> tuple[QuantPlan, dict]:
    """(plan, record): `plan` or the plan with its first layers in float (see module doc).
    `known_db`: `plan`'s own output SQNR on the same SAMPLES calibration inputs, where the caller
    measured it already (not simulated again)."""
    layers = prefix_layers(model, plan, budget)
    if not layers:
        return plan, {}
    batches = list(itertools.islice(iter(calib), SAMPLES))
    plans = {"0": plan}
    for k in range(1, len(layers) + 1):
        plans[str(k)] = mixed_plan(model, plan, {n: "fp32" for n in layers[:k]})
    measured = plans if known_db is None else {k: p for k, p in plans.items() if k != "0"}
    sqnr = {**({} if known_db is None else {"0": known_db}), **simulated_sqnr(model, measured, batches)}
    best = max(plans, key=lambda k: (sqnr[k], -int(k)))
    chosen = best if sqnr[best] > sqnr["0"] + margin else "0"
    record = {"sqnr_db": sqnr, "chosen": int(chosen), "layers": layers[:int(chosen)], "margin_db": margin,
              "criterion": "output SQNR of the simulated plan vs FP32 on calibration inputs"}
    out = plans[chosen]
    for name in layers[:int(chosen)]:
        out.nodes[name].reason = REASON.format(budget=budget)
    return out, record
