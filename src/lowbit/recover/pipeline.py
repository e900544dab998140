"""`recover_plan`: a calibrated (float model, plan) pair -> the same pair after distillation from FP32.

What `lowbit.quantize(..., recover=Recover(...))` calls between calibration and emit: the plan's
fake-quant graph (`lowbit.qat.QATGraph`, BN already folded as in the prepared graph) trains on the
calibration data against the FP32 model (`teacher`: the float model before any layer was fitted to
its grid), and leaves through `lowbit.qat.to_plan`, so the emitter, the kernels and parity are PTQ's.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx
import torch

from lowbit.data import FeedSource
from lowbit.errors import ConfigError
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import WEIGHTED_OPS
from lowbit.onnx.session import with_outputs
from lowbit.plan.quant_plan import QuantPlan
from lowbit.progress import Progress, null_progress
from lowbit.qat.export import to_plan
from lowbit.qat.graph import QATGraph, untrainable_ops
from lowbit.recover.data import fixed_batch, gather, split
from lowbit.recover.loop import History, run
from lowbit.recover.options import Recover
from lowbit.recover.teacher import Teacher

log = logging.getLogger(__name__)


def recover_plan(float_model: onnx.ModelProto, plan: QuantPlan, teacher_model: onnx.ModelProto | None,
                 calib: FeedSource, opts: Recover, progress: Progress = null_progress,
                 timings: dict[str, float] | None = None) -> tuple[onnx.ModelProto, QuantPlan]:
    """(float model, plan) after recovery; the plan records what recovery did under config['recover']."""
    start = time.perf_counter()
    if plan.precision != "int8":
        raise ConfigError(f"recover fine-tunes static int8 plans (int8, w4a8, ...); this plan is "
                          f"'{plan.precision}'.")
    teacher_model = teacher_model if teacher_model is not None else float_model
    watch = feature_points(float_model, teacher_model, plan, opts.features)
    qat = QATGraph(float_model, plan, learn_scales=True, watch=watch)
    teacher = Teacher(with_outputs(teacher_model, list(watch)) if watch else teacher_model,
                      qat.output_names + list(watch), torch.get_num_threads())
    data = split(gather(calib), opts.holdout, opts.seed)
    data.max_batch = fixed_batch(float_model)  # exporters that fix the batch at 1: one sample per pass
    hist = run(qat, teacher, data, opts, progress, start)
    model, new_plan = to_plan(qat)
    new_plan.config["recover"] = {**opts.to_dict(), **hist.summary(), "train_samples": data.n_train,
                                  "held_out_samples": data.n_held, "watched": list(watch)}
    if timings is not None:
        timings["recover"] = time.perf_counter() - start
    return model, new_plan


def check_recoverable(model: onnx.ModelProto) -> None:
    """Refuse, before any work, a graph recovery cannot train: one with operators that have no torch
    version in `lowbit.qat.ops` (control flow such as If / Loop among them)."""
    missing = untrainable_ops(model)
    if missing:
        raise ConfigError(f"recover cannot train this model: its graph has {', '.join(missing)}, which lowbit's "
                          "training graph does not run (it runs convolutional, linear, attention and LSTM layers "
                          "and shape arithmetic). Quantize without --recover.")


def feature_points(model: onnx.ModelProto, teacher: onnx.ModelProto, plan: QuantPlan, k: int) -> tuple[str, ...]:
    """Up to `k` intermediate tensors to distil: the quantized inputs of INT8 weighted layers (what
    the next block reads), evenly spaced in graph order, present in both graphs, never a graph input
    or output."""
    if k <= 0:
        return ()
    g = GraphIndex(model)
    computed = {o for n in teacher.graph.node for o in n.output}
    ends = set(g.graph_inputs) | set(g.graph_outputs)
    points: list[str] = []
    for node in model.graph.node:
        p = plan.nodes.get(node.name)
        t = node.input[0] if node.input else ""
        if (p is not None and p.precision == "int8" and node.op_type in WEIGHTED_OPS and t in computed
                and t not in ends and t not in points):
            points.append(t)
    if len(points) <= k:
        return tuple(points)
    picks = np.linspace(0, len(points) - 1, k + 1)[1:]  # the deepest included, the first layers' inputs not
    return tuple(dict.fromkeys(points[int(round(i))] for i in picks))


__all__ = ["recover_plan", "check_recoverable", "feature_points", "History"]
