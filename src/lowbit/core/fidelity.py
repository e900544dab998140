"""How far a quantized output is from its reference: SQNR and cosine, defined once.

Callers that stream batches accumulate the signal and noise powers (sums of squares) themselves
and convert them with `sqnr_db`; whole arrays go through `sqnr`.
"""

from __future__ import annotations

import numpy as np


def decibels(ratio):
    """10 log10(ratio): a power ratio in dB (arrays element-wise)."""
    return 10.0 * np.log10(ratio)


def sqnr_db(signal, noise) -> float:
    """Signal-to-quantization-noise ratio in dB from a signal power and a noise power (sums of
    squares over the same values); infinite when there is no noise.

    >>> sqnr_db(100.0, 1.0)
    20.0
    """
    return float("inf") if noise == 0 else float(decibels(signal / noise))


def sqnr(reference, candidate) -> float:
    """SQNR of `candidate` against `reference` in dB, pooled over all values, in float64:
    10 log10(sum ref^2 / sum (ref - cand)^2); infinite when they are identical."""
    r = np.asarray(reference, np.float64)
    return sqnr_db(np.sum(r * r), np.sum((r - candidate) ** 2))


def _rows(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def cosine_per_sample(reference, candidate) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, defined) per sample (row). Two zero vectors have no angle: undefined (0, False),
    to be left out of a mean. A zero candidate where the reference is not zero is a failure:
    cosine 0."""
    r, c = _rows(reference), _rows(candidate)
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    defined = nr > 0
    cos = np.where((nr > 0) & (nc > 0), np.sum(r * c, axis=1) / np.maximum(nr * nc, 1e-300), 0.0)
    return np.where(defined, cos, 0.0), defined
