"""Embeddings (faces, speakers, sentences): does search and verification on the candidate's
vectors give the reference's answers?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lowbit.metrics.base import Metric, ratio, register_metric


def _unit(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x.reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)


def _similarity(x) -> np.ndarray:
    u = _unit(x)
    return u @ u.T


@register_metric("nn-kept")
@dataclass(frozen=True)
class NearestNeighbourKept(Metric):
    """Fraction of samples whose nearest other sample (cosine) is the same under the candidate's
    embeddings as under the reference's: a search over the set returns the same top hit. Needs at
    least 2 samples; ties go to the lower index."""

    counts_samples: ClassVar[bool] = True

    def per_sample(self, reference, candidate, labels=None):
        n = len(reference)
        if n < 2:
            return ratio([], [])
        nn = []
        for x in (reference, candidate):
            s = _similarity(x)
            np.fill_diagonal(s, -np.inf)
            nn.append(s.argmax(axis=1))
        return ratio(nn[0] == nn[1], np.ones(n))

    def score(self, reference, candidate, labels=None) -> float:
        num, den = self.per_sample(reference, candidate)
        return float(num.sum() / den.sum()) if den.sum() else float("nan")


@register_metric("verification-agreement")
@dataclass(frozen=True)
class VerificationAgreement(Metric):
    """Fraction of sample pairs given the same same/different decision (cosine similarity >=
    `threshold` means "same") by the candidate as by the reference; each sample is credited with
    its share of the pairs it is in. The one knob: `threshold` (the deployment's)."""

    counts_samples: ClassVar[bool] = True
    threshold: float = 0.5

    def per_sample(self, reference, candidate, labels=None):
        n = len(reference)
        if n < 2:
            return ratio([], [])
        same = (_similarity(reference) >= self.threshold) == (_similarity(candidate) >= self.threshold)
        np.fill_diagonal(same, False)
        return ratio(same.sum(axis=1), np.full(n, n - 1))

    def score(self, reference, candidate, labels=None) -> float:
        num, den = self.per_sample(reference, candidate)
        return float(num.sum() / den.sum()) if den.sum() else float("nan")
