"""Percentile calibration: clip the range at a high percentile of the values seen."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.calibration.base import CalibrationMethod, Observer, register_calibration
from lowbit.calibration.histogram import HistogramObserver, check_bins
from lowbit.errors import ConfigError


def hist_quantile(counts: np.ndarray, first_edge: float, width: float, q: float) -> float:
    """The q-quantile (0 <= q <= 1) of values histogrammed in `counts`, bins of `width` from
    `first_edge`, at np.percentile's rank q * (n - 1), values spread evenly within a bin.

    >>> hist_quantile(np.array([0, 4, 0]), 0.0, 1.0, 0.5)
    1.5
    """
    cum = np.cumsum(counts)
    rank = q * (cum[-1] - 1)
    k = min(int(np.searchsorted(cum, rank, side="right")), counts.size - 1)  # bin holding that rank
    before = cum[k] - counts[k]
    return float(first_edge + width * (k + (rank - before + 0.5) / max(counts[k], 1)))


@register_calibration("percentile")
@dataclass(frozen=True)
class Percentile(CalibrationMethod):
    """Clip at the `percentile` (the knob; 99.99 by default) of the values seen.

    Symmetric grids clip at the percentile of |x|, so one tail's outliers cannot leave the other
    tail unclipped; asymmetric grids clip each tail on its own, at percentile and
    100 - percentile of x (a post-ReLU tensor keeps its lower end at 0). Estimated from a
    streaming histogram, within one bin (2R / bins) of np.percentile on all values.

    >>> from lowbit.core.dtypes import int8
    >>> obs = Percentile(99.9).observer()
    >>> obs.update(np.random.default_rng(0).laplace(size=10_000).astype(np.float32))
    >>> lo, hi = obs.range(int8, symmetric=True)
    """

    percentile: float = 99.99
    bins: int = 4096

    def __post_init__(self) -> None:
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100]; got {self.percentile}. Typical: 99.9 to 99.999.")
        check_bins(self.bins)

    def observer(self) -> Observer:
        return HistogramObserver(self.bins, chooser=self)

    def choose(self, hist: HistogramObserver, qmin: int, qmax: int, symmetric: bool) -> tuple[float, float]:
        q, w = self.percentile / 100.0, hist.width
        if symmetric:
            t = hist_quantile(hist.magnitude(), 0.0, w, q)
            return -t, t
        ends = [hist_quantile(hist.counts, -hist.radius, w, r) for r in (1.0 - q, q)]
        below = int(hist.negative().sum())  # ranks below / at exact zeros: the quantile is 0.0
        for j, r in enumerate((1.0 - q, q)):
            if hist.zeros and below <= r * (hist.count - 1) <= below + hist.zeros - 1:
                ends[j] = 0.0
        return ends[0], ends[1]
