"""Model outputs kept per sample for the task metrics, which need every sample at once (NMS and F1
over a set, nearest neighbours, bootstrap intervals). Bounded: past `analysis.held.HoldCap`'s
limits the rest is not kept, and the report says on how many samples each figure stands."""

from __future__ import annotations

import numpy as np

from lowbit.search.held import HoldCap


def sample_axis(shape: tuple[int, ...], samples: int) -> int | None:
    """The axis of an output holding a batch's `samples`: axis 0 where it fits, else the first axis
    of that length (time-major CTC heads are (T, N, C)); None: the whole output is one sample."""
    if shape and shape[0] == samples:
        return 0
    for i, d in enumerate(shape):
        if d == samples:
            return i
    return None


class OutputStore:
    """Per output name, a list of per-sample arrays; labels alongside when the batches carry them."""

    def __init__(self, names: list[str], cap: HoldCap | None = None) -> None:
        self.names = names
        self.samples: dict[str, list[np.ndarray]] = {k: [] for k in names}
        self.labels: list = []
        self.cap = cap or HoldCap()
        self.full = False

    def room(self) -> bool:
        """False once the cap is reached; the reference's store decides for all, so they stay aligned."""
        if not self.cap.room():
            self.full = True
        return not self.full

    def add(self, outputs: list[np.ndarray], size: int, labels=None) -> None:
        nbytes = 0
        for k, o in zip(self.names, outputs):
            o = np.asarray(o)
            axis = sample_axis(o.shape, size)
            self.samples[k] += [o] if axis is None else list(np.moveaxis(o, axis, 0))
            nbytes += o.nbytes
        if labels is not None:
            lab = np.asarray(labels)
            self.labels += list(lab) if lab.ndim else [lab]
        self.cap.add(size, nbytes)

    def stacked(self) -> dict[str, np.ndarray]:
        """name -> (N, ...); outputs whose samples differ in shape (dynamic lengths) are left out."""
        out = {}
        for k, rows in self.samples.items():
            if rows and len({r.shape for r in rows}) == 1:
                out[k] = np.stack(rows)
        return out

    def stacked_labels(self) -> np.ndarray | None:
        n = len(next(iter(self.samples.values()), []))
        return np.asarray(self.labels) if self.labels and len(self.labels) == n else None
