"""Observe stage: stream calibration batches through ONNX Runtime and update one observer per tensor.

Only one batch of intermediate tensors is alive at a time, so memory does not grow with the
number of calibration samples (ONNX Runtime's own calibrator keeps them all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from lowbit.calibration.base import CalibrationMethod, Observer
from lowbit.data import Batch
from lowbit.errors import DataError
from lowbit.onnx.session import run_batch, session, with_outputs
from lowbit.progress import Progress, null_progress


@dataclass
class CalibrationStats:
    """Observers by tensor name and how many samples they saw. Mergeable across shards."""

    observers: dict[str, Observer] = field(default_factory=dict)
    samples: int = 0

    def merge(self, other: "CalibrationStats") -> "CalibrationStats":
        for name, obs in other.observers.items():
            if name in self.observers:
                self.observers[name].merge(obs)
            else:
                self.observers[name] = obs
        self.samples += other.samples
        return self


def collect_stats(
    model: onnx.ModelProto,
    tensors: list[str],
    data: Iterable[Batch],
    method_for: Callable[[str], CalibrationMethod],
    progress: Progress = null_progress,
    total: int | None = None,
) -> CalibrationStats:
    """Run every calibration batch once and feed the chosen tensors to their observers."""
    sess = session(with_outputs(model, tensors), optimize=False, arena=False)
    stats = CalibrationStats({name: method_for(name).observer() for name in tensors})
    # stateful data (lowbit.data.stateful) takes back the state outputs of this run for its next chunk
    carried = [o for o in getattr(data, "state_outputs", []) if o not in tensors]
    for batch in data:
        values = run_batch(sess, batch, tensors + carried)
        if hasattr(data, "hand_back"):
            data.hand_back(batch, dict(zip(tensors + carried, values)))  # type: ignore[attr-defined]
        for name, v in zip(tensors, values):
            stats.observers[name].update(np.asarray(v, dtype=np.float32))
        values = v = None  # freed before the next batch's are computed
        stats.samples += batch.size
        progress("calibrate", stats.samples, total)
    if stats.samples == 0:
        raise DataError("calibration data is empty: no samples were found. Give at least one sample "
                        "(a few hundred representative ones are best).")
    return stats

