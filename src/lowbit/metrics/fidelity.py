"""Agreement of a candidate with the FP32 reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lowbit.metrics.base import Metric, ratio, register_metric


def _rows(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def cosine_per_sample(reference, candidate) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, defined) per sample. Two zero vectors have no angle: undefined (0, False), left out
    of the mean. A zero candidate where the reference is not zero is a failure: cosine 0."""
    r, c = _rows(reference), _rows(candidate)
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    defined = nr > 0
    cos = np.where((nr > 0) & (nc > 0), np.sum(r * c, axis=1) / np.maximum(nr * nc, 1e-300), 0.0)
    return np.where(defined, cos, 0.0), defined


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
        r = np.asarray(reference, np.float64)
        noise = np.sum((r - candidate) ** 2)
        return float("inf") if noise == 0 else float(10 * np.log10(np.sum(r * r) / noise))
