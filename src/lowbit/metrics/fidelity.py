"""Agreement of a candidate with the FP32 reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lowbit.metrics.base import Metric, register_metric


@register_metric("top1-agreement")
@dataclass(frozen=True)
class Top1Agreement(Metric):
    """Fraction of samples whose arg-max class is the reference's."""

    counts_samples: ClassVar[bool] = True

    def score(self, reference, candidate, labels=None) -> float:
        return float(np.mean(reference.argmax(axis=-1) == candidate.argmax(axis=-1)))


@register_metric("cosine")
@dataclass(frozen=True)
class Cosine(Metric):
    """Mean cosine similarity of each sample's output vector to the reference's."""

    def score(self, reference, candidate, labels=None) -> float:
        r = reference.reshape(len(reference), -1).astype(np.float64)
        c = candidate.reshape(len(candidate), -1).astype(np.float64)
        den = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
        return float(np.mean(np.sum(r * c, axis=1) / np.maximum(den, 1e-300)))


@register_metric("sqnr")
@dataclass(frozen=True)
class Sqnr(Metric):
    """Signal-to-quantization-noise ratio of the outputs, in dB."""

    def score(self, reference, candidate, labels=None) -> float:
        r = reference.astype(np.float64)
        noise = np.sum((r - candidate) ** 2)
        return float("inf") if noise == 0 else float(10 * np.log10(np.sum(r * r) / noise))
