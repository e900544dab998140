"""Entropy calibration: the clip threshold that loses least information, measured as KL divergence
(TensorRT's INT8 calibration; S. Migacz, "8-bit Inference with TensorRT", GTC 2017)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.calibration.base import CalibrationMethod, Observer, register_calibration
from lowbit.calibration.histogram import HistogramObserver, check_bins, trim
from lowbit.errors import ConfigError


def kl_threshold_bins(h: np.ndarray, levels: int) -> int:
    """The number i of histogram bins to keep (levels <= i <= len(h)) minimising KL(P || Q).

    P: the first i bins, with everything beyond folded into bin i-1 (the clipped outliers).
    Q: those i bins (outliers excluded) merged into `levels` near-equal chunks, each chunk's mass
    spread evenly over its bins where P is nonzero.
    All candidates at once in closed form from prefix sums: O(len(h) * levels).

    >>> kl_threshold_bins(np.ones(512), 128)
    512
    """
    h = np.asarray(h, dtype=np.float64)
    n = h.size
    if n <= levels:
        return n
    total = h.sum()
    i = np.arange(levels, n + 1)  # candidates, (M,)
    c = np.concatenate([[0.0], np.cumsum(h)])  # prefix sums, (n+1,)
    nz = np.concatenate([[0], np.cumsum(h > 0)])
    g = np.concatenate([[0.0], np.cumsum(np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0))])
    # chunk j: bins [ceil(j*i/levels), ceil((j+1)*i/levels)), as NVIDIA's pytorch-quantization
    # splits them; TensorRT's sample code gives the remainder all to the last chunk, which biases
    # the threshold to just below multiples of `levels` bins
    start = -(-(np.arange(levels)[None, :] * i[:, None]) // levels)  # (M, levels)
    stop = np.concatenate([start[:, 1:], i[:, None]], axis=1)
    tail = total - c[i]  # outliers beyond the threshold, (M,)
    last = h[i - 1] + tail  # P's last bin
    s = c[stop] - c[start]  # Q's chunk masses
    z = (nz[stop] - nz[start]).astype(np.float64)  # bins where P is nonzero, per chunk
    z[:, -1] += (last > 0).astype(np.float64) - (h[i - 1] > 0)
    p = s.copy()
    p[:, -1] += tail  # P's mass per chunk
    with np.errstate(divide="ignore", invalid="ignore"):
        p_log_q = np.where(p > 0, p * np.log(s / z), 0.0).sum(axis=1)  # -inf where Q misses P
        p_log_p = g[i - 1] + np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0)), 0.0)
        kl = (p_log_p - p_log_q) / total - np.log(total) + np.log(c[i])
    kl = np.where(np.isfinite(kl), kl, np.inf)
    return int(i[np.argmin(kl)]) if np.isfinite(kl).any() else n


@register_calibration("entropy")
@dataclass(frozen=True)
class Entropy(CalibrationMethod):
    """Clip where the KL divergence between the value histogram and its quantized version is least
    (TensorRT's calibration, Migacz 2017). The knob: `target_bins`, the grid levels the histogram
    is merged into; None takes them from the grid (128 for |x| on int8, 256 for a one-sided
    post-ReLU tensor on an asymmetric uint8 grid). `bins` = 4096 gives TensorRT's 2048 per sign.

    Two-sided tensors get a symmetric threshold on |x|; one-sided ones (all >= 0 or all <= 0)
    search only their side, with the whole grid when it is asymmetric. Exact zeros (half of a
    post-ReLU tensor) are left out: zero is on every grid, so they cannot favour any threshold,
    while their spike in the first bin would otherwise pull the threshold far down.

    >>> from lowbit.core.dtypes import int8
    >>> obs = Entropy().observer()
    >>> obs.update(np.random.default_rng(0).laplace(size=10_000).astype(np.float32))
    >>> lo, hi = obs.range(int8, symmetric=True)
    """

    bins: int = 4096
    target_bins: int | None = None

    def __post_init__(self) -> None:
        check_bins(self.bins)
        if self.target_bins is not None and self.target_bins < 2:
            raise ConfigError(f"Entropy target_bins must be at least 2 (or None for the grid's); got {self.target_bins}")

    def observer(self) -> Observer:
        return HistogramObserver(self.bins, chooser=self)

    def choose(self, hist: HistogramObserver, qmin: int, qmax: int, symmetric: bool) -> tuple[float, float]:
        levels = qmax - qmin + 1
        if hist.lo >= 0.0 or hist.hi <= 0.0:  # one-sided, e.g. after ReLU
            h = hist.positive(nonzero=True) if hist.lo >= 0.0 else hist.negative()
            levels = levels if not symmetric else levels // 2
        else:
            h, levels = hist.magnitude(nonzero=True), levels // 2
        t = kl_threshold_bins(trim(h), self.target_bins or levels) * hist.width
        return -t, t
