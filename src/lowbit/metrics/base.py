"""The metric interface: a frozen config that scores a candidate's outputs against the reference's."""

from __future__ import annotations

import abc
import inspect
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
    # how many model outputs score() takes: 1 -> one array (N, ...); more -> a list of arrays
    outputs_used: ClassVar[int] = 1
    # scored against labels, not against the reference: FP32 has a value of its own
    needs_labels: ClassVar[bool] = False

    @abc.abstractmethod
    def score(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> float:
        """reference, candidate: the first model output stacked over all samples, (N, ...)."""

    def per_sample(self, reference, candidate, labels=None) -> tuple[np.ndarray, np.ndarray] | None:
        """(numerators, denominators), one pair per sample, such that score = sum(num) / sum(den):
        what the report resamples for its confidence interval. None: not a ratio over samples."""
        return None

    @classmethod
    def definition(cls) -> str:
        """The docstring's first paragraph on one line: what `lowbit list metrics` shows."""
        doc = inspect.getdoc(cls) or ""
        return " ".join(doc.split("\n\n")[0].split())


METRICS: Registry[Metric] = Registry("metric")
register_metric = METRICS.register


def ratio(num, den) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(num, np.float64).reshape(-1), np.asarray(den, np.float64).reshape(-1)
