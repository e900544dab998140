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


def paired_gain_db(without: np.ndarray, with_it: np.ndarray, alpha: float, seed: int,
                   draws: int = 2000) -> tuple[float, float]:
    """(SQNR gain in dB of `with_it` over `without`, its one-sided `alpha` lower bound): paired bootstrap
    over inputs, given each input's squared error under both. A gain a few inputs carry has a low bound."""
    gain = sqnr_db(without.sum(), with_it.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(without), size=(draws, len(without)))
    a, b = without[idx].sum(axis=1), with_it[idx].sum(axis=1)
    gains = decibels(np.maximum(a, 1e-300) / np.maximum(b, 1e-300))
    return gain, float(np.quantile(gains, alpha))


def aligned(reference, candidate) -> tuple[np.ndarray, np.ndarray]:
    """`reference` and `candidate` as float64 arrays of one shape, to be compared value by value.

    An output's shape can depend on its values: a decoder's sequence stops at its end token (a
    table or text recognizer's `Loop`), a detector keeps the boxes above a score. A quantized model
    may then give a longer or shorter output than FP32 for the same input. Both are zero-padded to
    the larger extent of every axis (flattened first when even the ranks differ), so what one has
    and the other lacks counts in full as error, and the same values compare where both have them.

    >>> [a.tolist() for a in aligned([[1.0, 2.0]], [[1.0, 2.0, 3.0]])]
    [[[1.0, 2.0, 0.0]], [[1.0, 2.0, 3.0]]]
    """
    r, c = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if r.shape == c.shape:
        return r, c
    if r.ndim != c.ndim:
        r, c = r.reshape(-1), c.reshape(-1)
    shape = tuple(max(a, b) for a, b in zip(r.shape, c.shape))
    return _padded(r, shape), _padded(c, shape)


def _padded(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if x.shape == shape:
        return x
    out = np.zeros(shape, np.float64)
    out[tuple(slice(0, n) for n in x.shape)] = x
    return out


def squared_error(reference, candidate) -> float:
    """sum (ref - cand)^2 in float64 over `aligned` values."""
    r, c = aligned(reference, candidate)
    return float(np.sum(np.square(r - c)))


def sqnr(reference, candidate) -> float:
    """SQNR of `candidate` against `reference` in dB, pooled over all values, in float64:
    10 log10(sum ref^2 / sum (ref - cand)^2) over `aligned` values; infinite when they are identical."""
    r, c = aligned(reference, candidate)
    return sqnr_db(np.sum(r * r), np.sum((r - c) ** 2))


def _rows(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def cosine_per_sample(reference, candidate) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, defined) per sample (row). Two zero vectors have no angle: undefined (0, False),
    to be left out of a mean. A zero candidate where the reference is not zero is a failure:
    cosine 0."""
    r, c = aligned(reference, candidate)
    r, c = _rows(r), _rows(c)
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    defined = nr > 0
    cos = np.where((nr > 0) & (nc > 0), np.sum(r * c, axis=1) / np.maximum(nr * nc, 1e-300), 0.0)
    return np.where(defined, cos, 0.0), defined
