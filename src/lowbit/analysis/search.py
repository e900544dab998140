"""Accuracy-budgeted precision search: the smallest (or fastest) per-layer mix of INT8, float
layers (FP16 or INT8-stored weights) and FP32 -- and, where `choices` offers them, block-wise
weights (4-bit MatMulNBits, 8- or 4-bit GatherBlockQuantized embeddings) -- whose metric stays
within the budget on held-out data.

Greedy and deterministic: start from all-INT8 (with each choice's 8-bit option, e.g. the embedding
table in 8-bit blocks); promote layers to FP16 weights in order of measured sensitivity, in
doubling batches, until the budget is met; bisect the last batch; then try each promoted layer back
in INT8 (least sensitive first; with objective 'latency' and measured costs, the layer whose INT8
kernel saves the most time first) and keep it there if the budget still holds. With `weight_only`,
the layers still in float are then tried on INT8-stored weights ('w8'), the largest first. With
`choices`, layers are then
tried at 4 bits, largest first for the embedding table, least sensitive first for the rest
(linear layers only with objective 'size': on CPUs the 4-bit MatMul is slower than INT8), each kept
if the budget holds. Every evaluated mix is kept, and its non-dominated ones form the Pareto set.
Bounded in evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from lowbit.analysis.evaluate import PlanEvaluator
from lowbit.analysis.mixed import layer_nodes, mixed_plan, plan_size_bytes
from lowbit.analysis.sensitivity import LayerSensitivity
from lowbit.graph import GraphIndex
from lowbit.plan import QuantPlan
from lowbit.progress import Progress, null_progress


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
                "pareto": [c.to_dict() for c in self.pareto], "evaluations": len(self.candidates),
                "candidates": [{k: v for k, v in c.to_dict().items() if k != "promoted"} for c in self.candidates],
                "reasons": self.reasons}


def search_precisions(model: onnx.ModelProto, plan: QuantPlan, evaluator: PlanEvaluator, floor: float,
                      ranking: list[LayerSensitivity], costs: dict | None = None, objective: str = "size",
                      max_evals: int = 40, progress: Progress = null_progress,
                      choices: dict | None = None, weight_only: bool = False) -> SearchResult:
    """Search for the mix meeting `metric >= floor` with the smallest size (or latency).
    `choices`: block-wise weight options per node (`mixed_plan`). `weight_only`: layers kept in
    float are then tried with INT8-stored weights ('w8': float arithmetic, half of FP16's bytes)."""
    g = GraphIndex(model)
    layers = set(layer_nodes(plan))
    # promote first the layers whose float version recovers the most
    order = [s.name for s in sorted(ranking, key=lambda s: (-s.all_but_this_metric, s.only_this_metric))
             if s.name in layers]
    # a float layer keeps FP16 weights: FP32 fidelity at half the size, same speed on CPUs
    # without FP16 arithmetic
    up = "fp16"
    candidates: list[Candidate] = []

    def latency(promoted: dict[str, str]) -> float | None:
        if not costs:
            return None
        floats = {n for n, p in promoted.items() if p not in ("int8", "w4")}  # w4 layers run the int8 kernel
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
            c = evaluate({n: up for n in order[:k]})
            if ok(c):
                hi, best = k, c
                break
            lo, step = k, step * 2
        if hi is not None:
            while hi - lo > 1 and len(candidates) < max_evals:  # bisect within the last batch
                mid = (lo + hi) // 2
                c = evaluate({n: up for n in order[:mid]})
                if ok(c):
                    hi, best = mid, c
                else:
                    lo = mid
        else:
            best = max(candidates, key=lambda c: c.metric)
    met = ok(best)
    # evaluations kept for the steps after the INT8 one: weight-only INT8, 4-bit options
    later = [weight_only, any("w4" in c or "int4" in c for c in choices.values())]
    reserve = sum(max_evals // 4 for flag in later if flag)
    if met:  # try the promoted layers back in INT8, least sensitive first (latency: the largest saving first)
        back = list(reversed([n for n, v in best.promoted.items() if n not in base_mix or v != base_mix[n]]))
        if costs and objective == "latency":
            saving = {n: costs[n].fp32_ms - costs[n].int8_ms if n in costs else 0.0 for n in back}
            back.sort(key=lambda n: -saving[n])  # stable: equal savings keep the sensitivity order
        for name in back:
            if len(candidates) >= max_evals - reserve:
                break
            trial = {k2: v for k2, v in best.promoted.items() if k2 != name}
            c = evaluate(trial)
            if ok(c):
                best = c
    if met and weight_only:  # float layers on INT8-stored weights, the largest first
        weights = {n: int(np.size(g.constant(g.nodes[n].input[1]))) if len(g.nodes[n].input) > 1
                   and g.constant(g.nodes[n].input[1]) is not None else 0 for n in layers}
        for name in sorted((n for n, v in best.promoted.items() if v == up and weights.get(n)),
                           key=lambda n: -weights[n]):
            if len(candidates) >= max_evals - (max_evals // 4 if later[1] else 0):
                break
            c = evaluate({**best.promoted, name: "w8"})
            if ok(c):
                best = c
    if met and choices:  # then 4-bit blocks: the embedding table first, then the least sensitive layers
        sizes = {n: max(int(np.size(g.constant(t.name))), 1) for n, c in choices.items() for t in c.values()}
        lower = [n for n in sorted(base_mix, key=lambda n: -sizes[n]) if "int4" in choices[n]]
        if objective == "size":
            lower += [n for n in reversed(order) if "int4" in choices.get(n, {}) and n not in best.promoted]
        # 4-bit weights on the int8 kernels (w4a8 layers) cost no speed: the largest layers first
        lower += [n for n in sorted(choices, key=lambda n: -sizes[n]) if "w4" in choices[n] and n not in best.promoted]
        for name in lower:
            if len(candidates) >= max_evals:
                break
            c = evaluate({**best.promoted, name: "w4" if "w4" in choices[name] else "int4"})
            if ok(c):
                best = c
    reasons = {}
    by_name = {s.name: s for s in ranking}
    for name in order:
        s = by_name[name]
        if best.promoted.get(name) == "int4":
            reasons[name] = "int4: block-wise 4-bit weights, and the budget still holds"
        elif best.promoted.get(name) == "w4":
            reasons[name] = "w4: 4-bit weights on the int8 kernel (8-bit activations), and the budget still holds"
        elif name in best.promoted:
            how = {"w8": "w8: float arithmetic on INT8-stored weights", "fp16": "fp16: float arithmetic on FP16 weights"}
            reasons[name] = (f"{how.get(best.promoted[name], best.promoted[name])}: among the most sensitive (float here recovers the metric to "
                             f"{s.all_but_this_metric:.4f}; quantized alone it gives {s.only_this_metric:.4f}), and "
                             "the budget is not met with it in INT8")
        else:
            reasons[name] = "int8: the budget holds with this layer in INT8"
    for name in set(best.promoted) - set(order):
        reasons[name] = f"{best.promoted[name]}: block-wise weights (embedding table), and the budget holds"
    return SearchResult(mixed_plan(model, plan, best.promoted, g, choices=choices), best, floor, met, candidates,
                        reasons)
