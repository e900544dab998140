"""Is a layer's INT8 kernel slower than FP32 beyond measurement noise?

One-layer timings vary between runs and sessions by several percent (thread placement, cache
state). A decision taken on two medians flips with that noise: one conv measured 0.316 vs 0.271 ms
stayed FP32 in one run and went INT8 in the next. So a layer stays float only when the INT8/FP32
time ratio exceeds 1 by more than its own spread plus a fixed margin; a layer within noise goes the
default way (INT8). The statistics are order statistics of the given runs: no random resampling,
so the same runs always give the same verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The INT8/FP32 ratio must exceed 1 by this much beyond its spread: between-session shifts of a few
# percent are not in one session's spread (a session moved one ResNet-18 graph by 7%).
MARGIN = 0.05
# ...and INT8 must lose at least this many ms: below it the size win decides.
MIN_SAVING_MS = 0.02

# plan.config key holding the timings behind each latency-kept layer (evidence of one run on one
# machine: emit.metadata leaves it out of the model file, which depends on the choices only)
PLAN_KEY = "layer_costs"


@dataclass(frozen=True)
class RatioEstimate:
    """INT8 time / FP32 time of one layer: median over paired runs and its interquartile range."""

    fp32_ms: float  # medians
    int8_ms: float
    ratio: float
    low: float  # 25th percentile of the per-run ratios (the median minus its lower noise)
    high: float  # 75th percentile
    runs: int

    @property
    def clearly_slower(self) -> bool:
        """INT8 slower beyond noise and margin: ratio - 1 > (ratio - low) + MARGIN, i.e. low > 1 + MARGIN."""
        return self.low > 1.0 + MARGIN and self.int8_ms - self.fp32_ms > MIN_SAVING_MS

    def to_dict(self) -> dict:
        return {"fp32_ms": round(self.fp32_ms, 5), "int8_ms": round(self.int8_ms, 5),
                "int8_fp32_ratio": round(self.ratio, 4), "ratio_iqr": [round(self.low, 4), round(self.high, 4)],
                "runs": self.runs, "margin": MARGIN}


def estimate_ratio(fp32_runs, int8_runs, fp32_ms: float | None = None, int8_ms: float | None = None
                   ) -> RatioEstimate:
    """The ratio from per-run times; runs i of both lists were measured back to back (interleaved),
    so their ratio cancels slow drifts of the machine. Without runs (medians only) the spread is 0."""
    f, q = np.asarray(fp32_runs, np.float64), np.asarray(int8_runs, np.float64)
    if f.size and f.size == q.size and np.all(f > 0):
        r = q / f
        lo, mid, hi = (float(v) for v in np.percentile(r, [25, 50, 75]))
        return RatioEstimate(float(np.median(f)), float(np.median(q)), mid, lo, hi, int(f.size))
    if fp32_ms is None or int8_ms is None:
        raise ValueError("estimate_ratio needs paired runs of equal length, or both medians")
    ratio = int8_ms / fp32_ms if fp32_ms > 0 else 1.0  # no FP32 time: no evidence, the default way
    return RatioEstimate(float(fp32_ms), float(int8_ms), ratio, ratio, ratio, 0)


def check_plan_timings(value) -> str | None:
    """Why plan.decisions["layer_costs"] (as read from a plan file) is malformed, or None. The timings
    are evidence for a reader, never re-used: re-applying a plan does not measure or re-decide."""
    if not isinstance(value, dict):
        return "must be an object {node name: timings}"
    numbers = ("fp32_ms", "int8_ms", "int8_fp32_ratio", "margin", "weight_share")
    for node, t in value.items():
        if not isinstance(t, dict):
            return f"entry {str(node)[:60]!r} must be an object"
        for k, v in t.items():
            if k in numbers:
                ok = type(v) in (int, float) and math.isfinite(v) and v >= 0
            elif k == "ratio_iqr":
                ok = (isinstance(v, list) and len(v) == 2
                      and all(type(x) in (int, float) and math.isfinite(x) and x >= 0 for x in v))
            elif k == "runs":
                ok = type(v) is int and v >= 0
            else:
                return f"entry {str(node)[:60]!r} has an unknown field {str(k)[:40]!r}"
            if not ok:
                return f"entry {str(node)[:60]!r}: {k} is {str(v)[:40]}, not a finite non-negative number"
    return None
