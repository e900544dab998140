"""Recovered candidate mixes: with `--max-drop` and `--recover`, a mix is recovered before it is judged.

The precision search judges mixes of the (recovered) all-INT8 plan with some layers in float, their
float weights restored, and nothing trained around them. Recovery can close part of the gap those
float layers close, so after the search, mixes with fewer float layers are each recovered
(`lowbit.recover`, distilled from FP32 with the float layers in place) and then judged on the search
half: first the search's own mix, then fewer float layers by bisection (the most sensitive stay
float), at most `tries` recoveries in all. The smallest recovered mix within the budget on the
search half ships if it also holds on the held-out half; if none does, the search's own mix ships
as it was, with its own verdict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from lowbit.onnx.graph import GraphIndex
from lowbit.plan.quant_plan import QuantPlan
from lowbit.progress import Progress, null_progress
from lowbit.search.evaluate import PlanEvaluator, Score
from lowbit.search.float_layers import restore_float_layers
from lowbit.search.mixed import mixed_plan, plan_size_bytes

log = logging.getLogger(__name__)

FLOAT_PRECISIONS = ("fp16", "fp32", "w8")  # what recovery can try to move back to INT8
Recovery = Callable[[onnx.ModelProto, QuantPlan], tuple[onnx.ModelProto, QuantPlan]]


@dataclass
class MixTrial:
    """One recovered mix: how many of the search's float layers it keeps float, and its scores."""

    float_layers: int
    metric: float
    sqnr_db: float
    size_bytes: int
    seconds: float
    holdout_metric: float | None = None
    holdout_sqnr_db: float | None = None
    promoted: dict[str, str] | None = None
    model: onnx.ModelProto | None = None
    plan: QuantPlan | None = None

    def to_dict(self) -> dict:
        return {"float_layers": self.float_layers, "metric": self.metric, "sqnr_db": self.sqnr_db,
                "size_bytes": self.size_bytes, "seconds": round(self.seconds, 1),
                "holdout_metric": self.holdout_metric, "holdout_sqnr_db": self.holdout_sqnr_db}


def recover_mixes(model: onnx.ModelProto, base: QuantPlan, promoted: dict[str, str], order: list[str],
                  float_weights: onnx.ModelProto | None, search: PlanEvaluator, confirm: PlanEvaluator,
                  floor: float, recover: Recovery, choices: dict | None = None, tries: int = 3,
                  progress: Progress = null_progress) -> tuple[tuple[onnx.ModelProto, QuantPlan] | None, dict]:
    """((float model, plan) of the smallest recovered mix that meets `floor` on both halves, or None
    where none does; the record of what was tried). `promoted`: the search's chosen
    mix over `base`; `order`: layers, most sensitive first; `recover(float model, plan)` trains one."""
    g = GraphIndex(model)
    floats = [n for n in order if promoted.get(n) in FLOAT_PRECISIONS]
    if tries < 1:
        return None, {"search_float_layers": len(floats), "tries": [], "shipped_float_layers": None}
    trials: dict[int, MixTrial] = {}

    def attempt(k: int) -> MixTrial:
        mix = {n: p for n, p in promoted.items() if n not in floats[k:]}
        plan = mixed_plan(model, base, mix, g, choices=choices)
        start = time.perf_counter()
        float_model = restore_float_layers(model, float_weights, plan) if float_weights is not None else model
        rec_model, rec_plan = recover(float_model, plan)
        s: Score = search.on_model(rec_model).score(rec_plan)
        t = MixTrial(k, s.metric, s.sqnr_db, plan_size_bytes(rec_model, rec_plan), time.perf_counter() - start,
                     promoted=mix, model=rec_model, plan=rec_plan)
        trials[k] = t
        log.info("recovered mix with %d of %d float layers: %.4f on the search half (floor %.4f)", k, len(floats),
                 s.metric, floor)
        progress("recover mixes", len(trials), tries)
        return t

    lo, hi = -1, None  # the most float layers known to fail, the fewest known to pass
    t = attempt(len(floats))
    if t.metric >= floor:
        hi = len(floats)
    while hi is not None and hi - lo > 1 and len(trials) < tries:
        mid = (lo + 1 + hi) // 2 if lo < 0 else (lo + hi) // 2
        mid = min(mid, hi - 1)
        if attempt(mid).metric >= floor:
            hi = mid
        else:
            lo = mid
    shipped = None
    for k in sorted(k for k, t in trials.items() if t.metric >= floor):  # fewest float layers first
        held = confirm.on_model(trials[k].model).score(trials[k].plan)
        trials[k].holdout_metric, trials[k].holdout_sqnr_db = held.metric, held.sqnr_db
        if trials[k].holdout_metric >= floor:
            shipped = trials[k]
            break
    record = {"search_float_layers": len(floats), "tries": [trials[k].to_dict() for k in sorted(trials)],
              "shipped_float_layers": shipped.float_layers if shipped else None,
              "shipped_promoted": dict(shipped.promoted or {}) if shipped else None}
    if shipped is None:
        log.info("no recovered mix met the budget on both halves; the search's mix ships as it was")
        return None, record
    for name in floats[shipped.float_layers:]:
        shipped.plan.nodes[name].reason = "int8: recovered with the float layers in place, the budget holds"
    return (shipped.model, shipped.plan), record
