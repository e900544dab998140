"""Moving-average min-max calibration: an exponential moving average of each batch's min and max."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lowbit.calibration.base import CalibrationMethod, Observer, register_calibration
from lowbit.calibration.histogram import nonfinite_message
from lowbit.core.dtypes import QDtype
from lowbit.errors import ConfigError, DataError


class MovingAverageObserver(Observer):
    """EMA of per-batch min / max: ema = momentum * ema + (1 - momentum) * batch; the first batch
    sets it. Merging shards averages their EMAs weighted by value counts: an approximation."""

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = momentum
        self.ema_lo = 0.0
        self.ema_hi = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self._count = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError(nonfinite_message(x))
        if self._count == 0:
            self.ema_lo, self.ema_hi = lo, hi
        else:
            m = self.momentum
            self.ema_lo = m * self.ema_lo + (1.0 - m) * lo
            self.ema_hi = m * self.ema_hi + (1.0 - m) * hi
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self._count += int(x.size)

    def merge(self, other: Observer) -> None:
        if not isinstance(other, MovingAverageObserver) or other.momentum != self.momentum:
            raise ConfigError(f"cannot merge {type(other).__name__} into a moving-average observer "
                              f"(momentum {self.momentum}): shards must use the same calibration method")
        n = self._count + other.count
        if other.count:
            a, b = self._count / n, other.count / n
            self.ema_lo = a * self.ema_lo + b * other.ema_lo
            self.ema_hi = a * self.ema_hi + b * other.ema_hi
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self._count = n

    def range(self, dtype: QDtype | None = None, symmetric: bool | None = None) -> tuple[float, float]:
        return (self.ema_lo, self.ema_hi) if self._count else (0.0, 0.0)

    def observed_range(self) -> tuple[float, float]:
        return (self.lo, self.hi) if self._count else (0.0, 0.0)

    @property
    def count(self) -> int:
        return self._count


@register_calibration("moving_average")
@dataclass(frozen=True)
class MovingAverageMinMax(CalibrationMethod):
    """Range = exponential moving average of each batch's min and max (as TensorFlow's and
    PyTorch's MovingAverageMinMax observers); the knob is `momentum` (0.9: about the last 10
    batches dominate). Per-batch extremes are smoothed rather than kept, so rare outliers
    stretch the range less than with min-max.

    It depends on batch order (and batch size), so calibrating in shards and merging is only
    approximate: shards' averages are combined weighted by their value counts.

    >>> MovingAverageMinMax(momentum=0.9).observer().range()
    (0.0, 0.0)
    """

    momentum: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1); got {self.momentum}. Typical: 0.9 to 0.99.")

    def observer(self) -> Observer:
        return MovingAverageObserver(self.momentum)
