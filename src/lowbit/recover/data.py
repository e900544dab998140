"""The calibration data as arrays for training: every sample in memory, split into a training part
and a held-out part that training never sees (it only chooses the step to ship and when to stop).

Samples of different shapes (sentences of their own lengths) are kept in groups of one shape; a
batch drawn across groups runs as one forward pass per group."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.data import FeedSource
from lowbit.errors import ConfigError, DataError

MIN_HOLDOUT = 16
MIN_TRAIN = 16


class Samples:
    """Samples in groups of one shape (input name -> array, samples on axis 0)."""

    def __init__(self, groups: list[dict[str, np.ndarray]]) -> None:
        self.groups = groups
        self.index = [(g, r) for g, feeds in enumerate(groups) for r in range(len(next(iter(feeds.values()))))]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def one_shape(self) -> bool:
        return len(self.groups) == 1

    def take(self, idx) -> list[dict[str, np.ndarray]]:
        """The samples `idx`, as one feed dict per shape group (in the order groups first appear)."""
        rows: dict[int, list[int]] = {}
        for i in idx:
            g, r = self.index[int(i)]
            rows.setdefault(g, []).append(r)
        return [{k: v[rs] for k, v in self.groups[g].items()} for g, rs in rows.items()]

    def subset(self, idx) -> Samples:
        return Samples(self.take(np.sort(np.asarray(idx))))


@dataclass
class Split:
    train: Samples
    held: Samples

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_held(self) -> int:
        return len(self.held)


def gather(calib: FeedSource) -> Samples:
    """All calibration samples, per input stacked on axis 0 (the inputs' batch axis), grouped by shape."""
    if getattr(calib, "sequences", False):
        raise ConfigError("recover does not train stateful models (data run as sequences with a carried state) "
                          "yet; quantize without --recover.")
    groups: dict[tuple, dict[str, list[np.ndarray]]] = {}
    for batch in calib:
        for name in batch.feeds:
            axis = calib.axes.get(name, 0)
            if axis != 0:
                raise ConfigError(f"recover needs every input's samples on axis 0; input '{name}' has them on "
                                  f"axis {axis}.")
        key = tuple((k, v.shape[1:]) for k, v in sorted(batch.feeds.items()))
        group = groups.setdefault(key, {})
        for name, arr in batch.feeds.items():
            group.setdefault(name, []).append(arr)
    if not groups:
        raise DataError("recover needs calibration data: it got no samples.")
    return Samples([{k: np.ascontiguousarray(np.concatenate(v, 0)) for k, v in g.items()} for g in groups.values()])


def split(samples: Samples | dict[str, np.ndarray], holdout: float, seed: int) -> Split:
    """A seeded random split: round(holdout * N) samples (at least 16) held out, the rest to train on."""
    if isinstance(samples, dict):
        samples = Samples([samples])
    n = len(samples)
    n_held = max(MIN_HOLDOUT, int(round(holdout * n)))
    if n - n_held < MIN_TRAIN:
        raise DataError(f"recover needs at least {MIN_HOLDOUT + MIN_TRAIN} calibration samples ({MIN_HOLDOUT} held "
                        f"out for early stopping, {MIN_TRAIN} to train on); got {n}. Give a few hundred.")
    order = np.random.default_rng([seed, 18]).permutation(n)
    return Split(samples.subset(order[n_held:]), samples.subset(order[:n_held]))
