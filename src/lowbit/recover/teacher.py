"""The teacher: the FP32 model run by ONNX Runtime (faster than the torch graph, and exactly the
reference `lowbit.verify` compares with).

Its worker threads must not spin-wait: between two teacher calls torch computes on the same cores,
and a spinning ONNX Runtime thread takes them from it."""

from __future__ import annotations

import numpy as np
import onnx

from lowbit.onnx.session import session


class Teacher:
    """FP32 outputs for a feed dict; `outputs` names them in the student's order."""

    def __init__(self, model: onnx.ModelProto, outputs: list[str], threads: int) -> None:
        self.session = session(model, threads=max(1, threads))
        self.outputs = outputs

    def __call__(self, feeds: dict[str, np.ndarray], batch: int = 32) -> list[np.ndarray]:
        n = len(next(iter(feeds.values())))
        parts = [self.session.run(self.outputs, {k: v[i:i + batch] for k, v in feeds.items()})
                 for i in range(0, n, batch)]
        return [np.concatenate([p[j] for p in parts], 0) for j in range(len(self.outputs))]
