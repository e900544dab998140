"""Model outputs kept per sample for the task metrics, which need every sample at once (NMS and F1
over a set, nearest neighbours, bootstrap intervals). Bounded: past `analysis.held.HoldCap`'s
limits the rest is not kept, and the report says on how many samples each figure stands."""

from __future__ import annotations

import numpy as np

from lowbit.data.axes import output_batch_axis
from lowbit.search.held import HoldCap


def first_sample_outputs(sess, batch) -> list[np.ndarray] | None:
    """The model's outputs for the batch's first sample alone: what tells a batch axis from a
    time axis of the same length. None where inputs do not all hold samples on axis 0 or the
    model refuses a batch of one."""
    if batch.rows is not None:
        return None
    feeds = {k: v[:1] if v.ndim and v.shape[0] == batch.size else v for k, v in batch.feeds.items()}
    try:
        return sess.run(None, feeds)
    except Exception:  # noqa: BLE001 - a fixed batch size: the caller falls back to the first axis
        return None


class OutputStore:
    """Per output name, a list of per-sample arrays; labels alongside when the batches carry them."""

    def __init__(self, names: list[str], cap: HoldCap | None = None, axes: dict | None = None) -> None:
        self.names = names
        # output name -> batch axis, fixed once a batch of several samples shows it; a candidate's
        # store shares the reference's, so both are cut the same way
        self.axes: dict[str, int | None] = {} if axes is None else axes
        self.samples: dict[str, list[np.ndarray]] = {k: [] for k in names}
        self.labels: list = []
        self.cap = cap or HoldCap()
        self.full = False

    def room(self) -> bool:
        """False once the cap is reached; the reference's store decides for all, so they stay aligned."""
        if not self.cap.room():
            self.full = True
        return not self.full

    def _axis(self, name: str, index: int, shape: tuple[int, ...], size: int, probe, probed: list) -> int | None:
        if name in self.axes:
            return self.axes[name]
        single = None
        if size > 1 and sum(d == size for d in shape) > 1 and probe is not None:
            if not probed:
                probed.append(probe())
            single = probed[0][index].shape if probed[0] is not None else None
        axis = output_batch_axis(shape, size, single)
        if size > 1:  # one sample leaves the axis open (every length-1 axis cuts the same)
            self.axes[name] = axis
        return axis

    def add(self, outputs: list[np.ndarray], size: int, labels=None, probe=None) -> None:
        """One batch's outputs; `probe()` gives the outputs for its first sample alone, asked
        only where an output has several axes of the batch's length."""
        nbytes = 0
        probed: list = []
        for i, (k, o) in enumerate(zip(self.names, outputs)):
            o = np.asarray(o)
            axis = self._axis(k, i, o.shape, size, probe, probed)
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
