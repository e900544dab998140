"""Min-max calibration: the range is exactly the smallest and largest value seen."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.calibration.base import CalibrationMethod, Observer, register_calibration


class MinMaxObserver(Observer):
    def __init__(self) -> None:
        self.lo = np.inf
        self.hi = -np.inf
        self._count = 0

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        self._count += int(x.size)

    def merge(self, other: Observer) -> None:
        assert isinstance(other, MinMaxObserver)
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self._count += other.count

    def range(self, dtype=None, symmetric=None) -> tuple[float, float]:
        return self.observed_range()

    def observed_range(self) -> tuple[float, float]:
        if self._count == 0:
            return 0.0, 0.0
        return self.lo, self.hi

    @property
    def count(self) -> int:
        return self._count


@register_calibration("minmax")
@dataclass(frozen=True)
class MinMax(CalibrationMethod):
    """Range = [min, max] of everything seen. Fast and exact on the calibration set; one outlier
    stretches the range and wastes grid levels on values that almost never occur."""

    def observer(self) -> Observer:
        return MinMaxObserver()
