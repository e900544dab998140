"""Classifiers: does the candidate pick the reference's classes, and how often is it right?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lowbit.errors import DataError
from lowbit.metrics.base import Metric, ratio, register_metric


def _scores(x) -> np.ndarray:
    x = np.asarray(x)
    return x.reshape(len(x), -1)


@register_metric("top5-agreement")
@dataclass(frozen=True)
class Top5Agreement(Metric):
    """Fraction of samples whose reference top-1 class is among the candidate's `k` (5) highest
    scores. Output (N, C) class scores."""

    counts_samples: ClassVar[bool] = True
    k: int = 5

    def per_sample(self, reference, candidate, labels=None):
        r, c = _scores(reference), _scores(candidate)
        k = min(self.k, c.shape[1])
        top = np.argpartition(-c, k - 1, axis=1)[:, :k]
        hit = (top == r.argmax(axis=1)[:, None]).any(axis=1)
        return ratio(hit, np.ones(len(hit)))

    def score(self, reference, candidate, labels=None) -> float:
        num, den = self.per_sample(reference, candidate)
        return float(num.sum() / den.sum()) if den.sum() else 1.0


@register_metric("top1-accuracy")
@dataclass(frozen=True)
class Top1Accuracy(Metric):
    """Fraction of labeled samples whose arg-max class is the label (the model's own accuracy, not
    agreement with FP32). Output (N, C); labels (N,) class ids."""

    counts_samples: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = True

    def per_sample(self, reference, candidate, labels=None):
        if labels is None:
            raise DataError("top1-accuracy needs labels (--labels).")
        lab = np.asarray(labels).reshape(-1)
        pred = _scores(candidate).argmax(axis=1)
        if len(lab) != len(pred):
            raise DataError(f"top1-accuracy: {len(lab)} labels for {len(pred)} samples.")
        return ratio(pred == lab, np.ones(len(lab)))

    def score(self, reference, candidate, labels=None) -> float:
        num, den = self.per_sample(reference, candidate, labels)
        return float(num.sum() / den.sum()) if den.sum() else float("nan")
