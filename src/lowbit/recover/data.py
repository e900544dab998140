"""The calibration data as arrays for training: every sample in memory, split into a training part
and a held-out part that training never sees (it only chooses the step to ship and when to stop)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.data import FeedSource
from lowbit.errors import ConfigError, DataError

MIN_HOLDOUT = 16
MIN_TRAIN = 16


@dataclass
class Split:
    """`train` / `held`: input name -> array with samples on axis 0."""

    train: dict[str, np.ndarray]
    held: dict[str, np.ndarray]

    @property
    def n_train(self) -> int:
        return len(next(iter(self.train.values())))

    @property
    def n_held(self) -> int:
        return len(next(iter(self.held.values())))


def gather(calib: FeedSource) -> dict[str, np.ndarray]:
    """All calibration samples, per input, stacked on axis 0 (the inputs' batch axis)."""
    if getattr(calib, "sequences", False):
        raise ConfigError("recover does not train stateful models (data run as sequences with a carried state) "
                          "yet; quantize without --recover.")
    parts: dict[str, list[np.ndarray]] = {}
    for batch in calib:
        for name, arr in batch.feeds.items():
            axis = calib.axes.get(name, 0)
            if axis != 0:
                raise ConfigError(f"recover needs every input's samples on axis 0; input '{name}' has them on "
                                  f"axis {axis}.")
            parts.setdefault(name, []).append(arr)
    if not parts:
        raise DataError("recover needs calibration data: it got no samples.")
    out = {}
    for name, arrs in parts.items():
        shapes = {a.shape[1:] for a in arrs}
        if len(shapes) > 1:
            raise ConfigError(f"recover trains on batches of equal-shaped samples; input '{name}' has samples of "
                              f"{len(shapes)} shapes ({', '.join(map(str, sorted(shapes)[:3]))}, ...). Give "
                              f"calibration samples of one shape.")
        out[name] = np.ascontiguousarray(np.concatenate(arrs, 0))
    return out


def split(samples: dict[str, np.ndarray], holdout: float, seed: int) -> Split:
    """A seeded random split: round(holdout * N) samples (at least 16) held out, the rest to train on."""
    n = len(next(iter(samples.values())))
    n_held = max(MIN_HOLDOUT, int(round(holdout * n)))
    if n - n_held < MIN_TRAIN:
        raise DataError(f"recover needs at least {MIN_HOLDOUT + MIN_TRAIN} calibration samples ({MIN_HOLDOUT} held "
                        f"out for early stopping, {MIN_TRAIN} to train on); got {n}. Give a few hundred.")
    order = np.random.default_rng([seed, 18]).permutation(n)
    held, train = np.sort(order[:n_held]), np.sort(order[n_held:])
    return Split({k: v[train] for k, v in samples.items()}, {k: v[held] for k, v in samples.items()})
