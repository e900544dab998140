"""Agreement of yes/no decisions taken by thresholding a score (voice activity, wake words,
binary classifiers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.metrics.base import Metric, ratio, register_metric


@register_metric("decisions@0.5")
@dataclass(frozen=True)
class Decisions(Metric):
    """Fraction of output scores on the same side of `threshold` (score >= threshold is "yes") in
    the candidate as in the reference, over every element of every sample (each VAD chunk is one
    decision). 1.0 for an empty output (no decision to disagree on)."""

    threshold: float = 0.5

    def score(self, reference, candidate, labels=None) -> float:
        r, c = np.asarray(reference) >= self.threshold, np.asarray(candidate) >= self.threshold
        return 1.0 if r.size == 0 else float(np.mean(r == c))

    def per_sample(self, reference, candidate, labels=None):
        r, c = np.asarray(reference) >= self.threshold, np.asarray(candidate) >= self.threshold
        same = (r == c).reshape(len(r), -1)
        return ratio(same.sum(axis=1), np.full(len(same), same.shape[1]))
