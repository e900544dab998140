"""Metric results a report can trust: each value with its sample count, a 95% interval where the
metric is a ratio over samples, and the checks no average may hide (an all-zero or non-finite
output where FP32's is not).

Intervals: a metric whose samples each pass or fail (agreement) gets the Wilson score interval,
which stays honest at tiny n (8 of 8 agreeing: 0.68-1.00, not 1.00-1.00); other ratios (F1, CER,
IoU, cosine) a percentile bootstrap over samples (2000 resamples, seeded).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from lowbit.errors import ConfigError
from lowbit.metrics.spec import MetricChoice, metric_callable

Z95 = 1.959963984540054
# below this many samples a figure is flagged: one sample more or less moves it by over 3%
FEW_SAMPLES = 30


@dataclass(frozen=True)
class MetricResult:
    name: str
    value: float | None            # None: undefined (e.g. cosine of two zero outputs everywhere)
    n: int                         # samples the value was computed on
    ci_low: float | None
    ci_high: float | None
    higher_is_better: bool
    definition: str
    outputs: tuple[str, ...]
    source: str                    # 'given' | 'inferred' | 'generic'
    reason: str = ""
    undefined: int = 0             # samples left out because the metric has no value there

    def to_dict(self) -> dict:
        d = asdict(self)
        d["outputs"] = list(self.outputs)
        return d


def wilson(passed: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion passed / n.

    >>> [round(v, 4) for v in wilson(8, 8)]
    [0.6756, 1.0]
    """
    if n <= 0:
        return 0.0, 1.0
    p = passed / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(num: np.ndarray, den: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval of sum(num) / sum(den) with samples drawn with replacement; resamples
    whose denominator is 0 are left out. None with fewer than 2 samples."""
    n = len(num)
    if n < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    d = den[idx].sum(axis=1)
    ok = d > 0
    if not ok.any():
        return None
    r = num[idx].sum(axis=1)[ok] / d[ok]
    lo, hi = np.percentile(r, [2.5, 97.5])
    return float(lo), float(hi)


def interval(num: np.ndarray, den: np.ndarray) -> tuple[float, float] | None:
    scored = den > 0
    if np.all(den[scored] == 1) and np.all(np.isin(num[scored], (0.0, 1.0))):
        return wilson(float(num[scored].sum()), int(scored.sum()))
    return bootstrap(num[scored], den[scored])


def _inputs(choice: MetricChoice, outputs: dict[str, np.ndarray]):
    names = list(outputs)
    used = int(getattr(choice.metric, "outputs_used", 1))
    keys = choice.outputs or tuple(names[:used])
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise ConfigError(f"metric {choice.name} reads output {missing[0]!r}, which the model does not have; "
                          f"its outputs: {', '.join(names)}.")
    arrays = [outputs[k] for k in keys]
    return keys, (arrays[0] if used == 1 else arrays)


def evaluate(choice: MetricChoice, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
             labels: np.ndarray | None = None) -> MetricResult:
    """One metric on stacked outputs (name -> (N, ...)); FP32 scored against itself for metrics that
    need labels only."""
    keys, ref = _inputs(choice, reference)
    _, cand = _inputs(choice, candidate)
    n = len(reference[keys[0]])
    per = choice.metric.per_sample(ref, cand, labels) if hasattr(choice.metric, "per_sample") else None
    lo = hi = None
    undefined = 0
    if per is not None:
        num, den = per
        scored = den > 0
        undefined = int(len(den) - scored.sum()) if choice.name == "cosine" else 0
        n = int(len(den)) - undefined
        if den.sum() > 0:
            value = float(num.sum() / den.sum())
            ci = interval(num, den)
            lo, hi = ci if ci else (None, None)
        else:
            value = float(metric_callable(choice)(ref, cand, labels))
    else:
        value = float(metric_callable(choice)(ref, cand, labels))
    if value is not None and math.isnan(value):
        value = None
    return MetricResult(choice.name, value, n, lo, hi, choice.higher_is_better, choice.definition, keys,
                        choice.source, choice.reason, undefined)


def output_failures(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> list[str]:
    """What no average may hide: an output that is non-finite, or all zeros where FP32's is not."""
    out = []
    for k, r in reference.items():
        c = candidate.get(k)
        if c is None or c.size == 0 or not np.issubdtype(c.dtype, np.floating):
            continue
        if not np.all(np.isfinite(c)) and np.all(np.isfinite(r)):
            out.append(f"output {k} has {int(np.count_nonzero(~np.isfinite(c)))} non-finite values (FP32: none)")
        elif not np.any(c) and np.any(r):
            out.append(f"output {k} is all zeros where FP32's is not")
    return out
