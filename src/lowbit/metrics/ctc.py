"""Text recognition agreement with FP32 for CTC models (CRNN, SVTR): greedy-decode both models'
outputs and compare the strings.

The alphabet maps token ids to characters one to one, so comparing decoded id sequences gives the
same exact-match rate and edit distances as comparing the strings; `decode_text` renders them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lowbit.metrics.base import Metric, ratio, register_metric


def ctc_greedy(sequence: np.ndarray, blank: int = 0) -> list[int]:
    """Best-path CTC decode of one sample: (T, C) scores or (T,) ids -> token ids, repeats merged,
    blanks dropped. Length-1 axes beside T and C go (a time-major head's (T, 1, C) sample).

    >>> ctc_greedy(np.array([0, 3, 3, 0, 3, 5, 5]))
    [3, 3, 5]
    >>> ctc_greedy(np.eye(4)[[0, 2, 2, 0, 1]][:, None, :])
    [2, 1]
    """
    ids = np.asarray(sequence)
    if ids.ndim > 2:
        keep = [i for i, d in enumerate(ids.shape) if d > 1 or i == ids.ndim - 1]
        if len(keep) > 2:
            raise ValueError(f"a CTC sample is (T, C) scores or (T,) ids; got shape {list(ids.shape)}")
        ids = ids.reshape([ids.shape[i] for i in keep] if len(keep) == 2 else [1, ids.shape[-1]])
    if ids.ndim == 2:
        ids = ids.argmax(axis=-1)
    ids = ids.astype(np.int64).reshape(-1)
    keep = np.ones(len(ids), bool)
    keep[1:] = ids[1:] != ids[:-1]
    return [int(i) for i in ids[keep & (ids != blank)]]


def decode_text(sequence: np.ndarray, alphabet: Sequence[str], blank: int = 0) -> str:
    """The string of one sample: `alphabet[id]` for each decoded token (alphabet[blank] is unused)."""
    return "".join(alphabet[i] for i in ctc_greedy(sequence, blank))


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions, each cost 1)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _decoded(outputs: np.ndarray, blank: int) -> list[list[int]]:
    return [ctc_greedy(o, blank) for o in np.asarray(outputs)]


@register_metric("ctc-exact")
@dataclass(frozen=True)
class CtcExact(Metric):
    """Fraction of samples whose greedy CTC decode is the reference's, character for character.
    Outputs (N, T, C) scores or (N, T) ids, batch first (a time-major head's (T, N, C) is cut per
    sample by the report); `blank` is the CTC blank id."""

    counts_samples: ClassVar[bool] = True
    blank: int = 0

    def score(self, reference, candidate, labels=None) -> float:
        ref, cand = _decoded(reference, self.blank), _decoded(candidate, self.blank)
        return float(np.mean([r == c for r, c in zip(ref, cand)])) if ref else 1.0

    def per_sample(self, reference, candidate, labels=None):
        ref, cand = _decoded(reference, self.blank), _decoded(candidate, self.blank)
        return ratio([r == c for r, c in zip(ref, cand)], np.ones(len(ref)))


@register_metric("ctc-cer")
@dataclass(frozen=True)
class CtcCer(Metric):
    """Character error rate of the candidate's greedy CTC decode against the reference's: total
    edit distance / total reference characters (lower is better). When the reference reads no
    character at all the divisor is 1, so the rate is the number of characters the candidate
    invented (0.0 when both read nothing)."""

    higher_is_better: ClassVar[bool] = False
    blank: int = 0

    def score(self, reference, candidate, labels=None) -> float:
        ref, cand = _decoded(reference, self.blank), _decoded(candidate, self.blank)
        edits = sum(edit_distance(r, c) for r, c in zip(ref, cand))
        return edits / max(sum(len(r) for r in ref), 1)

    def per_sample(self, reference, candidate, labels=None):
        ref, cand = _decoded(reference, self.blank), _decoded(candidate, self.blank)
        return ratio([edit_distance(r, c) for r, c in zip(ref, cand)], [len(r) for r in ref])
