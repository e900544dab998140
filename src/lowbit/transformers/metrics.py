"""Sentence-embedding metrics, registered in lowbit's metric registry.

- `nn-preserved`: the fraction of sentences whose nearest neighbour in the set (cosine, itself
  excluded) is the same under the candidate's embeddings as under the reference's -- whether a
  semantic search over the set still returns the same top hit.
- `worst-cosine`: the smallest per-sample cosine to the reference (the mean hides outliers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lowbit.core.fidelity import cosine_per_sample
from lowbit.metrics.base import Metric, register_metric


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)


def nearest_neighbours(emb: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row, (N,)."""
    u = _unit(emb)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per-sample cosine of candidate to reference, (N,) (`lowbit.core.fidelity.cosine_per_sample`;
    0 where either vector is zero)."""
    return cosine_per_sample(reference, candidate)[0]


@register_metric("nn-preserved")
@dataclass(frozen=True)
class NearestNeighbourPreserved(Metric):
    """Fraction of samples whose nearest neighbour (cosine) in the set is unchanged; needs N >= 2.

    >>> NearestNeighbourPreserved().score(ref_embeddings, int8_embeddings)  # doctest: +SKIP
    0.96
    """

    counts_samples: ClassVar[bool] = True

    def score(self, reference, candidate, labels=None) -> float:
        if len(reference) < 2:
            return 1.0
        return float(np.mean(nearest_neighbours(reference) == nearest_neighbours(candidate)))


@register_metric("worst-cosine")
@dataclass(frozen=True)
class WorstCosine(Metric):
    """The lowest per-sample cosine similarity to the reference."""

    def score(self, reference, candidate, labels=None) -> float:
        return float(cosines(reference, candidate).min())
