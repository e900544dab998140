"""The metric interface: a frozen config that scores a candidate's outputs against the reference's."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lowbit.registry import Registry


@dataclass(frozen=True)
class Metric(abc.ABC):
    """score(reference outputs, candidate outputs, labels) -> float; `higher_is_better` says
    which way is good, so a budget ('at most 1% worse') can be checked for any metric."""

    registry_name: ClassVar[str] = "?"
    higher_is_better: ClassVar[bool] = True
    # the score is the fraction of samples that pass (top-1 agreement): a budget is a sample count
    counts_samples: ClassVar[bool] = False

    @abc.abstractmethod
    def score(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> float:
        """reference, candidate: the first model output stacked over all samples, (N, ...)."""


METRICS: Registry[Metric] = Registry("metric")
register_metric = METRICS.register
