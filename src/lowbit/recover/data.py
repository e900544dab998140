"""The calibration data as arrays for training: every sample in memory, split into a training part
and a held-out part that training never sees (it only chooses the step to ship and when to stop).

Samples of different shapes (sentences of their own lengths) are kept in groups of one shape; a
batch drawn across groups runs as one forward pass per group. Stateful sequences are kept call by
call, each with the state the FP32 model carried into it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.data import FeedSource
from lowbit.errors import ConfigError, DataError

MIN_HOLDOUT = 16
MIN_TRAIN = 16


class Samples:
    """Samples in groups of one shape (input name -> array, samples on axis 0). `stacked=False`:
    each group is one sample, fed as it is (a chunk of a sequence with its state: its axis 0 is
    time, not samples)."""

    def __init__(self, groups: list[dict[str, np.ndarray]], stacked: bool = True) -> None:
        self.groups = groups
        self.stacked = stacked
        self.index = [(g, r) for g, feeds in enumerate(groups)
                      for r in range(len(next(iter(feeds.values()))) if stacked else 1)]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def one_shape(self) -> bool:
        return self.stacked and len(self.groups) == 1

    def size(self, feeds: dict[str, np.ndarray]) -> int:
        """How many samples a feed dict of `take` holds."""
        return len(next(iter(feeds.values()))) if self.stacked else 1

    def take(self, idx) -> list[dict[str, np.ndarray]]:
        """The samples `idx`, as one feed dict per shape group (in the order groups first appear);
        unstacked, one per sample."""
        if not self.stacked:
            return [self.groups[self.index[int(i)][0]] for i in idx]
        rows: dict[int, list[int]] = {}
        for i in idx:
            g, r = self.index[int(i)]
            rows.setdefault(g, []).append(r)
        return [{k: v[rs] for k, v in self.groups[g].items()} for g, rs in rows.items()]

    def subset(self, idx) -> Samples:
        return Samples(self.take(np.sort(np.asarray(idx))), self.stacked)


@dataclass
class Split:
    """`max_batch`: the most samples one forward pass may take (1 where the model's inputs fix their
    batch axis to 1, as some exporters write them); None: any number."""

    train: Samples
    held: Samples
    max_batch: int | None = None

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_held(self) -> int:
        return len(self.held)


def gather(calib: FeedSource) -> Samples:
    """All calibration samples, per input stacked on axis 0 (the inputs' batch axis), grouped by shape.
    Stateful data (`lowbit.data.stateful`): each call of the sequence, with the state the FP32 model
    carried into it (teacher forcing), is one sample, fed as it is."""
    if getattr(calib, "sequences", False):
        calls = [{k: np.ascontiguousarray(v) for k, v in batch.feeds.items()} for batch in calib]
        if not calls:
            raise DataError("recover needs calibration data: it got no samples.")
        return Samples(calls, stacked=False)
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


def fixed_batch(model) -> int | None:
    """1 where an input of the ONNX `model` declares its batch axis (axis 0) as exactly 1, else None."""
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            return 1
    return None


def in_rows(feeds: dict, max_batch: int | None) -> list[dict]:
    """`feeds` (samples on axis 0) as pieces of at most `max_batch` samples (None: one piece)."""
    n = len(next(iter(feeds.values())))
    if max_batch is None or n <= max_batch:
        return [feeds]
    return [{k: v[i:i + max_batch] for k, v in feeds.items()} for i in range(0, n, max_batch)]
