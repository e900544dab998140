"""MSE calibration: the clipping range that minimises the expected squared quantization error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.calibration.base import CalibrationMethod, Observer, register_calibration
from lowbit.calibration.histogram import HistogramObserver, check_bins, trim
from lowbit.errors import ConfigError


def clip_errors(h: np.ndarray, width: float, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For thresholds t = k * width (k in `ks`) on a one-sided histogram `h` of |x|: the summed
    squared clipping error of the values beyond t, and how many values lie beyond t.

    Values are taken evenly spread within their bin: a bin centred at c adds n * ((c - t)**2 +
    width**2 / 12)."""
    h = np.asarray(h, dtype=np.float64)
    centre = (np.arange(h.size) + 0.5) * width
    rev = lambda a: np.concatenate([np.cumsum(a[::-1])[::-1], [0.0]])  # noqa: E731 (suffix sums)
    n, s1, s2 = rev(h), rev(h * centre), rev(h * (centre**2 + width**2 / 12.0))
    t = ks * width
    return s2[ks] - 2.0 * t * s1[ks] + t * t * n[ks], n[ks]


def candidates(n: int, most: int) -> np.ndarray:
    """Up to `most` + 1 bin counts in 0..n, evenly strided, always including n."""
    stride = max(1, -(-n // most))
    return np.unique(np.concatenate([np.arange(0, n + 1, stride), [n]]))


@register_calibration("mse")
@dataclass(frozen=True)
class MSE(CalibrationMethod):
    """Search the clipping range for the least expected squared error on the actual grid: the
    rounding error step**2 / 12 of every value inside the range plus the squared distance of every
    value outside it to the nearest end, both from the histogram. Symmetric grids search one
    threshold on |x|; asymmetric grids search both ends (each among `candidates` bin edges).
    The knob that matters is the grid itself (bits); `candidates` only sets the search resolution.

    >>> from lowbit.core.dtypes import int8
    >>> obs = MSE().observer()
    >>> obs.update(np.random.default_rng(0).laplace(size=10_000).astype(np.float32))
    >>> lo, hi = obs.range(int8, symmetric=True)
    """

    bins: int = 4096
    candidates: int = 512

    def __post_init__(self) -> None:
        check_bins(self.bins)
        if self.candidates < 8:
            raise ConfigError(f"MSE candidates must be at least 8; got {self.candidates}")

    def observer(self) -> Observer:
        return HistogramObserver(self.bins, chooser=self)

    def choose(self, hist: HistogramObserver, qmin: int, qmax: int, symmetric: bool) -> tuple[float, float]:
        w, total = hist.width, float(hist.count - hist.zeros)  # exact zeros quantize exactly
        if symmetric:
            h = trim(hist.magnitude(nonzero=True))
            ks = candidates(h.size, self.candidates)[1:]  # t > 0
            clip, out = clip_errors(h, w, ks)
            step = ks * w / np.floor((qmax - qmin) / 2.0)  # as choose_qparams sets a symmetric scale
            err = (total - out) * step**2 / 12.0 + clip
            t = float(ks[np.argmin(err)] * w)
            return -t, t
        pos, neg = trim(hist.positive(nonzero=True)), trim(hist.negative())
        kp, kn = candidates(pos.size, self.candidates), candidates(neg.size, self.candidates)
        clip_p, out_p = clip_errors(pos, w, kp)
        clip_n, out_n = clip_errors(neg, w, kn)
        step = (kn[:, None] + kp[None, :]) * w / (qmax - qmin)  # (negative end, positive end)
        err = (total - out_n[:, None] - out_p[None, :]) * step**2 / 12.0 + clip_n[:, None] + clip_p[None, :]
        a, b = np.unravel_index(np.argmin(err), err.shape)
        return float(-kn[a] * w), float(kp[b] * w)
