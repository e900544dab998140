"""Accuracy-budgeted precision search: the smallest (or fastest) per-layer mix of INT8, float
layers (FP16 or INT8-stored weights) and FP32 -- and, where `choices` offers them, block-wise
weights (4-bit MatMulNBits, 8- or 4-bit GatherBlockQuantized embeddings) -- whose metric stays
within the budget on held-out data.

Greedy and deterministic: start from all-INT8 (with each choice's 8-bit option, e.g. the embedding
table in 8-bit blocks); promote layers to float in order of measured sensitivity (FP16 weights; the
network's first layers FP32), in doubling batches, until the budget is met; bisect the last batch.
Then refinement steps move one layer at a time, each move kept if the budget still holds, each step
given an equal share of the evaluations left (`_refinement_steps`): float linear layers onto 8-bit
blocks run in int8 by MatMulNBits ('int8-block', CNN classifiers); with `weight_only` and objective
'size', float layers onto INT8-stored weights ('w8'), the largest first; promoted layers back in
INT8 (least sensitive first; with objective 'latency' and measured costs, the largest saving
first, and the 'w8' step after it); 4-bit options last (the embedding table first, least
sensitive linear layers with objective 'size': on CPUs the 4-bit MatMul is slower than INT8).
Every evaluated mix is kept, and its non-dominated ones form the Pareto set. Bounded in
evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from lowbit.emit.fp16 import early_layers
from lowbit.onnx.graph import GraphIndex
from lowbit.plan.quant_plan import QuantPlan
from lowbit.progress import Progress, null_progress
from lowbit.search.evaluate import PlanEvaluator
from lowbit.search.mixed import layer_nodes, mixed_plan, plan_size_bytes
from lowbit.search.sensitivity import LayerSensitivity


@dataclass
class Candidate:
    promoted: dict[str, str]
    metric: float
    sqnr_db: float
    size_bytes: int
    latency_ms: float | None

    def to_dict(self) -> dict:
        return {"promoted": dict(self.promoted), "metric": self.metric, "sqnr_db": self.sqnr_db,
                "size_bytes": self.size_bytes, "latency_ms": self.latency_ms}


@dataclass
class SearchResult:
    plan: QuantPlan
    chosen: Candidate
    floor: float
    met_budget: bool
    candidates: list[Candidate] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    backed_off: int = 0  # refinement moves undone because the budget failed on other held-out data

    @property
    def pareto(self) -> list[Candidate]:
        pts = self.candidates
        return [c for c in pts if not any(
            o is not c and o.metric >= c.metric and o.size_bytes <= c.size_bytes
            and (o.latency_ms or 0) <= (c.latency_ms or 0)
            and (o.metric > c.metric or o.size_bytes < c.size_bytes or (o.latency_ms or 0) < (c.latency_ms or 0))
            for o in pts)]

    def to_dict(self) -> dict:
        return {"floor": self.floor, "met_budget": self.met_budget, "chosen": self.chosen.to_dict(),
                "backed_off": self.backed_off,
                "pareto": [c.to_dict() for c in self.pareto], "evaluations": len(self.candidates),
                "candidates": [{k: v for k, v in c.to_dict().items() if k != "promoted"} for c in self.candidates],
                "reasons": self.reasons}


def promotion_order(ranking: list[LayerSensitivity], plan: QuantPlan) -> list[str]:
    """The plan's layers, most sensitive first: those whose float version recovers the most."""
    layers = set(layer_nodes(plan))
    return [s.name for s in sorted(ranking, key=lambda s: (-s.all_but_this_metric, s.only_this_metric))
            if s.name in layers]


def search_precisions(model: onnx.ModelProto, plan: QuantPlan, evaluator: PlanEvaluator, floor: float,
                      ranking: list[LayerSensitivity], costs: dict | None = None, objective: str = "size",
                      max_evals: int = 40, progress: Progress = null_progress,
                      choices: dict | None = None, weight_only: bool = False,
                      holds_elsewhere: Callable[[QuantPlan], bool] | None = None) -> SearchResult:
    """Search for the mix meeting `metric >= floor` with the smallest size (or latency).
    `choices`: block-wise weight options per node (`mixed_plan`). `weight_only`: layers kept in
    float are then tried with INT8-stored weights ('w8': float arithmetic, half of FP16's bytes).
    `holds_elsewhere(plan)`: the budget on other held-out data; where the chosen mix fails it, the
    refinement moves are undone, the latest first, until it holds (each move accepted at the edge
    of the budget on the search data is where the choice overfits that data)."""
    g = GraphIndex(model)
    order = promotion_order(ranking, plan)
    # a float layer keeps FP16 weights: FP32 fidelity at half the size, same speed on CPUs without
    # FP16 arithmetic; the network's first layers FP32, as the fp16 preset keeps them (an FP16
    # rounding there alone cost MobileNetV2 1% top-1 agreement, for under 1% of the weights)
    early = early_layers(model)

    def up(names: list[str]) -> dict[str, str]:
        return {n: "fp32" if n in early else "fp16" for n in names}

    candidates: list[Candidate] = []

    def latency(promoted: dict[str, str]) -> float | None:
        if not costs:
            return None
        # w4 layers run the int8 kernel; int8-block layers MatMulNBits' int8 one
        floats = {n for n, p in promoted.items() if p not in ("int8", "w4", "int8-block")}
        return sum((c.fp32_ms if c.node in floats else c.int8_ms) for c in costs.values())

    choices = choices or {}
    base_mix = {n: "int8" for n, c in choices.items() if "int8" in c}

    def evaluate(promoted: dict[str, str]) -> Candidate:
        promoted = base_mix | promoted
        p = mixed_plan(model, plan, promoted, g, choices=choices)
        s = evaluator.score(p)
        c = Candidate(dict(promoted), s.metric, s.sqnr_db, plan_size_bytes(model, p, g), latency(promoted))
        candidates.append(c)
        progress("search", len(candidates), max_evals)
        return c

    def ok(c: Candidate) -> bool:
        return c.metric >= floor

    best = evaluate({})
    k = 0
    if not ok(best):
        lo, hi, step = 0, None, 1
        while k < len(order) and len(candidates) < max_evals:  # doubling batches
            k = min(len(order), k + step)
            c = evaluate(up(order[:k]))
            if ok(c):
                hi, best = k, c
                break
            lo, step = k, step * 2
        if hi is not None:
            while hi - lo > 1 and len(candidates) < max_evals:  # bisect within the last batch
                mid = (lo + hi) // 2
                c = evaluate(up(order[:mid]))
                if ok(c):
                    hi, best = mid, c
                else:
                    lo = mid
        else:
            best = max(candidates, key=lambda c: c.metric)
    met = ok(best)
    accepted = [best]  # the mix that met the budget, then each refinement kept
    if met:
        ctx = _Context(g, order, base_mix, costs, choices, objective)
        steps = _refinement_steps(objective, weight_only, choices)
        for i, step in enumerate(steps):
            share = (max_evals - len(candidates)) // (len(steps) - i)  # unused evaluations carry over
            limit = len(candidates) + max(share, 0)
            for name, precision in step(best.promoted, ctx):
                if len(candidates) >= limit:
                    break
                trial = dict(best.promoted)
                if precision is None:
                    trial.pop(name, None)  # back to the INT8 plan
                else:
                    trial[name] = precision
                c = evaluate(trial)
                if ok(c):
                    best = c
                    accepted.append(c)
    backed_off = 0
    if met and holds_elsewhere is not None:
        while len(accepted) > 1 and not holds_elsewhere(mixed_plan(model, plan, best.promoted, g, choices=choices)):
            accepted.pop()
            best, backed_off = accepted[-1], backed_off + 1
    reasons = {}
    by_name = {s.name: s for s in ranking}
    for name in order:
        s = by_name[name]
        if best.promoted.get(name) == "int8-block":
            reasons[name] = ("int8-block: 8-bit block weights run by MatMulNBits in int8 (its input quantized per "
                             "block at run time), and the budget still holds")
        elif best.promoted.get(name) == "int4":
            reasons[name] = "int4: block-wise 4-bit weights, and the budget still holds"
        elif best.promoted.get(name) == "w4":
            reasons[name] = "w4: 4-bit weights on the int8 kernel (8-bit activations), and the budget still holds"
        elif name in best.promoted:
            how = {"w8": "w8: float arithmetic on INT8-stored weights", "fp16": "fp16: float arithmetic on FP16 weights",
                   "fp32": "fp32: one of the network's first layers, where FP16 rounding is amplified by every later one"}
            reasons[name] = (f"{how.get(best.promoted[name], best.promoted[name])}: among the most sensitive (float here recovers the metric to "
                             f"{s.all_but_this_metric:.4f}; quantized alone it gives {s.only_this_metric:.4f}), and "
                             "the budget is not met with it in INT8")
        else:
            reasons[name] = "int8: the budget holds with this layer in INT8"
    for name in set(best.promoted) - set(order):
        reasons[name] = f"{best.promoted[name]}: block-wise weights (embedding table), and the budget holds"
    return SearchResult(mixed_plan(model, plan, best.promoted, g, choices=choices), best, floor, met, candidates,
                        reasons, backed_off)



# --- refinement steps: each lists moves (layer, precision; None = back to the INT8 plan) from the
# mix the budget was met with; the search applies them one at a time and keeps those within budget


@dataclass
class _Context:
    g: GraphIndex
    order: list[str]       # layers, most sensitive first
    base_mix: dict[str, str]
    costs: dict | None
    choices: dict
    objective: str


def _refinement_steps(objective: str, weight_only: bool, choices: dict) -> list:
    """For size, the moves that save bytes at the least cost in accuracy come first: 8-bit block
    kernels (smaller and faster), then INT8-stored weights, then INT8 arithmetic; for latency,
    INT8 arithmetic first. 4-bit weights last."""
    steps = []
    if any("int8-block" in c for c in choices.values()):
        steps.append(_int8_blocks)
    if weight_only and objective == "size":
        steps.append(_weights_in_int8)
    steps.append(_back_to_int8)
    if weight_only and objective != "size":
        steps.append(_weights_in_int8)
    if any("w4" in c or "int4" in c for c in choices.values()):
        steps.append(_four_bit)
    return steps


def _back_to_int8(promoted: dict[str, str], ctx: _Context) -> list[tuple[str, str | None]]:
    """Promoted layers back in INT8, least sensitive first (objective latency with measured costs:
    the largest saving first)."""
    back = list(reversed([n for n, v in promoted.items() if n not in ctx.base_mix or v != ctx.base_mix[n]]))
    if ctx.costs and ctx.objective == "latency":
        saving = {n: ctx.costs[n].fp32_ms - ctx.costs[n].int8_ms if n in ctx.costs else 0.0 for n in back}
        back.sort(key=lambda n: -saving[n])  # stable: equal savings keep the sensitivity order
    return [(n, None) for n in back]


def _int8_blocks(promoted: dict[str, str], ctx: _Context) -> list[tuple[str, str | None]]:
    """Float layers MatMulNBits can run on 8-bit blocks (batch-1 classifiers), the largest first."""
    names = [n for n, v in promoted.items() if "int8-block" in ctx.choices.get(n, {}) and v != "int8-block"]
    return [(n, "int8-block") for n in sorted(names, key=lambda n: -_weight_count(ctx.g, n))]


def _weights_in_int8(promoted: dict[str, str], ctx: _Context) -> list[tuple[str, str | None]]:
    """FP16 layers on INT8-stored weights ('w8'), the largest first."""
    names = [n for n, v in promoted.items() if v == "fp16" and _weight_count(ctx.g, n)]
    return [(n, "w8") for n in sorted(names, key=lambda n: -_weight_count(ctx.g, n))]


def _four_bit(promoted: dict[str, str], ctx: _Context) -> list[tuple[str, str | None]]:
    """4-bit blocks: the embedding table first, then (objective size) the least sensitive linear
    layers, then 4-bit weights on the int8 kernels (w4a8 layers: no cost in speed), the largest first."""
    ch = ctx.choices
    sizes = {n: max(int(np.size(ctx.g.constant(t.name))), 1) for n, c in ch.items() for t in c.values()}
    lower = [n for n in sorted(ctx.base_mix, key=lambda n: -sizes[n]) if "int4" in ch[n]]
    if ctx.objective == "size":
        lower += [n for n in reversed(ctx.order) if "int4" in ch.get(n, {}) and n not in promoted]
    lower += [n for n in sorted(ch, key=lambda n: -sizes[n]) if "w4" in ch[n] and n not in promoted]
    return [(n, "w4" if "w4" in ch[n] else "int4") for n in lower]


def _weight_count(g: GraphIndex, name: str) -> int:
    node = g.nodes[name]
    w = g.constant(node.input[1]) if len(node.input) > 1 else None
    return int(np.size(w)) if w is not None else 0
