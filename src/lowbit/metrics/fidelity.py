"""Agreement of a candidate with the FP32 reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lowbit.core.fidelity import cosine_per_sample, sqnr
from lowbit.metrics.base import Metric, ratio, register_metric


@register_metric("top1-agreement")
@dataclass(frozen=True)
class Top1Agreement(Metric):
    """Fraction of samples whose arg-max class is the reference's."""

    counts_samples: ClassVar[bool] = True

    def score(self, reference, candidate, labels=None) -> float:
        return float(np.mean(reference.argmax(axis=-1) == candidate.argmax(axis=-1)))

    def per_sample(self, reference, candidate, labels=None):
        same = np.asarray(reference).argmax(axis=-1) == np.asarray(candidate).argmax(axis=-1)
        same = same.reshape(len(same), -1)
        return ratio(same.sum(axis=1), np.full(len(same), same.shape[1]))


@register_metric("cosine")
@dataclass(frozen=True)
class Cosine(Metric):
    """Mean cosine similarity of each sample's output vector to the reference's; samples where both
    are zero have no angle and are left out (NaN when every sample is such); a zero candidate where
    the reference is not scores 0."""

    def score(self, reference, candidate, labels=None) -> float:
        cos, defined = cosine_per_sample(reference, candidate)
        return float(cos[defined].mean()) if defined.any() else float("nan")

    def per_sample(self, reference, candidate, labels=None):
        cos, defined = cosine_per_sample(reference, candidate)
        return ratio(cos, defined)


@register_metric("sqnr")
@dataclass(frozen=True)
class Sqnr(Metric):
    """Signal-to-quantization-noise ratio of the outputs, in dB: 10 log10(sum ref^2 / sum (ref -
    cand)^2) pooled over all samples; infinite when they are identical."""

    def score(self, reference, candidate, labels=None) -> float:
        return sqnr(reference, candidate)
