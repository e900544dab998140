"""ONNX Runtime sessions as every stage uses them: CPU, no spin-waiting, an optional memory arena,
extra outputs exposed (`with_outputs`), and errors while running named by the batch's source."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from lowbit.errors import DataError
from lowbit.target.memory import release_free_memory

if TYPE_CHECKING:
    from lowbit.data import Batch

log = logging.getLogger(__name__)


def with_outputs(model: onnx.ModelProto, names: Iterable[str], copy: bool = True) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors `names` (`copy=False`: `model` itself, changed:
    for a model built only to be run, whose second copy would only cost memory)."""
    if copy:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    else:
        m = model
    present = {o.name for o in m.graph.output}
    # an output's declared type must be the tensor's own: ONNX Runtime refuses an int64 shape
    # tensor declared FLOAT (unknown types, where shape inference stopped, are taken as float)
    types = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.input)
             if v.type.tensor_type.elem_type}
    for name in names:
        if name not in present:
            elem = types.get(name, onnx.TensorProto.FLOAT)
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
            present.add(name)
    return m


def session(model: onnx.ModelProto | bytes, threads: int = 0, optimize: bool = True,
            spinning: bool = False, arena: bool = True) -> ort.InferenceSession:
    """A CPU InferenceSession; `threads` 0 lets ONNX Runtime choose.

    Worker threads do not spin-wait by default (`session.intra_op.allow_spinning=0`): on the 2-vCPU
    machines lowbit is measured on, a spinning worker slowed the computing thread 2.5x (MobileNetV2
    FP32 at 2 threads: 18.5 ms spinning, 7.4 ms not; 1 thread 10.7 ms).

    `arena=False` turns off ONNX Runtime's CPU memory arena: the arena keeps the largest memory a run
    ever needed (intermediates, and the outputs before Python copies them) for the session's life.
    The short-lived sessions of calibration and simulation, which expose many intermediates, use
    it off so that their memory goes back as each run ends (same results; the run's planned
    buffer is allocated per run instead).

    A new session starts a new stage: what the previous ones freed goes back to the OS first."""
    release_free_memory()
    so = ort.SessionOptions()
    if not arena:
        so.enable_cpu_mem_arena = False
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run_batch(sess: ort.InferenceSession, batch: Batch, names: list[str] | None = None) -> list[np.ndarray]:
    try:
        return sess.run(names, batch.feeds)
    except Exception as e:  # ONNX Runtime's errors carry no type worth keeping
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"ONNX Runtime could not run the model on {batch.source}: {first}") from None
