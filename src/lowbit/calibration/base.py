"""The calibration-method registry and the observer interface every method implements."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass

import numpy as np

from lowbit.registry import Registry


class Observer(abc.ABC):
    """Streaming statistics of one tensor. `update` sees one batch at a time; memory does not
    grow with the number of batches; `merge` combines observers of calibration shards."""

    @abc.abstractmethod
    def update(self, x: np.ndarray) -> None: ...

    @abc.abstractmethod
    def merge(self, other: "Observer") -> None: ...

    @abc.abstractmethod
    def range(self, dtype=None, symmetric: bool | None = None) -> tuple[float, float]:
        """The (lo, hi) float range to quantize over, for the target grid `dtype` (a QDtype;
        None = uint8) and symmetry (None = asymmetric). Min-max style methods ignore both."""

    @property
    @abc.abstractmethod
    def count(self) -> int:
        """Number of values seen."""

    @abc.abstractmethod
    def observed_range(self) -> tuple[float, float]:
        """The true min and max seen (for reports), whatever range the method chooses."""


@dataclass(frozen=True)
class CalibrationMethod(abc.ABC):
    """A frozen, serializable calibration config that makes observers."""

    registry_name = "?"

    @abc.abstractmethod
    def observer(self) -> Observer: ...

    def to_dict(self) -> dict:
        return {"name": self.registry_name, **asdict(self)}


CALIBRATIONS: Registry[CalibrationMethod] = Registry("calibration method")
"""Calibration methods by name (`--calibration NAME`, `lowbit list`)."""
register_calibration = CALIBRATIONS.register


def calibration_from_dict(d: dict) -> CalibrationMethod:
    d = dict(d)
    return CALIBRATIONS.create(d.pop("name"), **d)
