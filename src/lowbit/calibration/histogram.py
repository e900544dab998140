"""A streaming histogram of one tensor's values that merges exactly across calibration shards.

The histogram covers [-R, R) with a fixed number of equal bins, R a power of two. When a value
reaches R, R doubles (as often as needed) and adjacent bins are summed pairwise: since the edges
only scale by 2 they nest, so the counts equal those of binning every value at the final R.
Values are binned with floor(x / width), exact because width is a power of two. Hence one pass
over all batches and any split into shards merged in any order give bit-identical histograms.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from lowbit.calibration.base import Observer
from lowbit.core.dtypes import QDtype, uint8
from lowbit.errors import ConfigError, DataError

# R never falls below 2**MIN_EXP: values smaller than that share the two middle bins.
MIN_EXP = -64
# values binned per step of update: scratch buffers that stay in cache
CHUNK = 1 << 16


class RangeChooser(Protocol):
    """A calibration method that picks a range from a histogram, for a grid [qmin, qmax]."""

    def choose(self, hist: "HistogramObserver", qmin: int, qmax: int, symmetric: bool) -> tuple[float, float]: ...


def grid(dtype: QDtype | None, symmetric: bool | None) -> tuple[int, int, bool]:
    """(qmin, qmax, symmetric) of the target grid; unspecified means uint8, asymmetric."""
    d = uint8 if dtype is None else dtype
    return d.qmin, d.qmax, bool(symmetric) if symmetric is not None else False


def check_bins(bins: int) -> None:
    if bins < 4 or bins > 2**24 or bins & (bins - 1):
        raise ConfigError(f"histogram bins must be a power of two between 4 and 2**24; got {bins}. "
                          f"Try {2 ** max(2, min(24, round(math.log2(max(bins, 1)))))}.")


def exp_above(amax: float) -> int:
    """The smallest e (>= MIN_EXP) with 2**e > amax."""
    if amax <= 0.0:
        return MIN_EXP
    return max(MIN_EXP, math.frexp(amax)[1])  # amax = m * 2**e with 0.5 <= m < 1


def coarsen(counts: np.ndarray, factor: int) -> np.ndarray:
    """Counts of a histogram over [-R, R) re-binned over [-factor*R, factor*R), factor = 2**k.

    Old bin i lands in new bin (i + (factor - 1) * bins/2) // factor: groups of `factor`
    consecutive old bins fill the middle bins/factor new bins."""
    bins = counts.size
    if factor == 1:
        return counts.copy()
    factor = min(factor, bins // 2)  # past bins/2 everything sits in the two middle bins anyway
    new = np.zeros_like(counts)
    off = bins // 2 - bins // (2 * factor)
    new[off:off + bins // factor] = counts.reshape(-1, factor).sum(axis=1)
    return new


def nonfinite_message(x: np.ndarray) -> str:
    nan, pinf, ninf = int(np.isnan(x).sum()), int(np.isposinf(x).sum()), int(np.isneginf(x).sum())
    return (f"calibration tensor holds non-finite values ({nan} NaN, {pinf} +Inf, {ninf} -Inf among "
            f"{x.size}); a range cannot be calibrated from them. Check the input data's preprocessing "
            f"and that the model computes finite values on it.")


class HistogramObserver(Observer):
    """Streaming, exactly mergeable histogram; `chooser` turns it into a range.

    >>> obs = HistogramObserver(bins=2048)
    >>> obs.update(np.array([-1.0, 0.5, 3.0], dtype=np.float32))
    >>> obs.radius, obs.observed_range()
    (4.0, (-1.0, 3.0))
    """

    def __init__(self, bins: int = 4096, chooser: RangeChooser | None = None) -> None:
        check_bins(bins)
        self.bins = bins
        self.chooser = chooser
        self.exp = MIN_EXP  # R = 2**exp
        self.counts = np.zeros(bins, dtype=np.int64)
        self.lo = math.inf
        self.hi = -math.inf
        self._count = 0
        self.zeros = 0  # exact zeros: on every grid, whatever the range, so some methods skip them

    @property
    def radius(self) -> float:
        """R: the histogram covers [-R, R)."""
        return math.ldexp(1.0, self.exp)

    @property
    def width(self) -> float:
        """Width of one bin, 2R / bins (a power of two)."""
        return math.ldexp(1.0, self.exp + 1 - int(math.log2(self.bins)))

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).reshape(-1)  # binned as the float32 the model computes
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())  # NaN propagates through min / max
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError(nonfinite_message(x))
        self._grow(exp_above(max(-lo, hi)))
        shift = int(math.log2(self.bins)) - 1 - self.exp  # 1 / width = 2**shift
        # x * 2**shift is exact in float32 when shift >= 0 (|product| < bins/2, no underflow);
        # otherwise a tiny x could underflow float32, and float64 holds every product exactly
        ftype = np.float32 if shift >= 0 else np.float64
        scale = ftype(math.ldexp(1.0, shift))
        # chunks keep the scratch buffers in cache and spare the page faults of big temporaries
        n = min(x.size, CHUNK)
        fbuf, ibuf = np.empty(n, dtype=ftype), np.empty(n, dtype=np.intp)
        for s in range(0, x.size, CHUNK):
            part = x[s:s + CHUNK]
            f, i = fbuf[:part.size], ibuf[:part.size]
            np.multiply(part, scale, out=f, dtype=ftype)
            np.floor(f, out=i, casting="unsafe")  # an integer-valued float: the cast is exact
            i += self.bins // 2
            self.counts += np.bincount(i, minlength=self.bins)
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self._count += int(x.size)
        self.zeros += int(x.size - np.count_nonzero(x))

    def _grow(self, exp: int) -> None:
        if exp > self.exp:
            self.counts = coarsen(self.counts, 2 ** min(exp - self.exp, 30))
            self.exp = exp

    def merge(self, other: Observer) -> None:
        if not isinstance(other, HistogramObserver) or other.bins != self.bins or other.chooser != self.chooser:
            raise ConfigError(f"cannot merge {other!r} into {self!r}: shards must use the same calibration "
                              f"method and histogram bins")
        exp = max(self.exp, other.exp)
        self._grow(exp)
        self.counts += coarsen(other.counts, 2 ** min(exp - other.exp, 30))
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self._count += other.count
        self.zeros += other.zeros

    def range(self, dtype: QDtype | None = None, symmetric: bool | None = None) -> tuple[float, float]:
        """The range the calibration method chooses for `dtype`'s grid (default uint8, asymmetric)."""
        if self._count == 0:
            return 0.0, 0.0
        if self.chooser is None or self.lo == self.hi:
            return self.observed_range()
        lo, hi = self.chooser.choose(self, *grid(dtype, symmetric))
        lo, hi = max(float(lo), self.lo), min(float(hi), self.hi)  # never wider than the data
        if lo > hi:  # a threshold inside a one-sided tensor's gap from zero: clip everything to it
            lo = hi = hi if self.lo >= 0.0 else lo
        return lo, hi

    def observed_range(self) -> tuple[float, float]:
        return (0.0, 0.0) if self._count == 0 else (self.lo, self.hi)

    @property
    def count(self) -> int:
        return self._count

    # views the methods search over -----------------------------------------------------------
    def positive(self, nonzero: bool = False) -> np.ndarray:
        """Counts of the bins [k*width, (k+1)*width), k = 0 .. bins/2 - 1 (without exact zeros
        if `nonzero`)."""
        h = self.counts[self.bins // 2:].copy()
        h[0] -= self.zeros if nonzero else 0
        return h

    def negative(self) -> np.ndarray:
        """Counts of the bins [-(k+1)*width, -k*width) of the negative values, k = 0 .. bins/2 - 1."""
        return self.counts[self.bins // 2 - 1::-1]

    def magnitude(self, nonzero: bool = False) -> np.ndarray:
        """Counts of |x| over the bins [k*width, (k+1)*width) (up to the edge for negatives)."""
        return self.positive(nonzero) + self.negative()

    def __repr__(self) -> str:
        return f"HistogramObserver(bins={self.bins}, R=2**{self.exp}, count={self._count}, chooser={self.chooser!r})"


def trim(h: np.ndarray) -> np.ndarray:
    """h without its trailing empty bins (at least one bin kept)."""
    nz = np.flatnonzero(h)
    return h[: (nz[-1] + 1 if nz.size else 1)]
