"""`export`: a trained QATGraph -> (float model, QuantPlan) -> lowbit's QDQ ONNX, as PTQ ships.

The trained float weights (BN folded with running statistics) replace the initializers of the
plan's float model; each learned step size becomes its TensorPlan's scale (zero points stay the
plan's); int32 biases are re-derived on the new accumulator grids. `emit_qdq` then writes the same
kind of model `lowbit.quantize` writes, plan recorded in its metadata, so `lowbit.verify`
(parity, fidelity, latency) applies unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from lowbit.emit import emit_qdq
from lowbit.io import atomic_write_bytes, check_output_path
from lowbit.load.prepare import fingerprint
from lowbit.plan.planner import bias_plan
from lowbit.plan.quant_plan import QuantPlan, TensorPlan
from lowbit.qat.graph import QATGraph
from lowbit.verify.parity import output_step


@dataclass
class QATExport:
    """What `export` gives back: the deployable model, the float model and plan it was emitted from,
    and, when example inputs were given, the agreement of ONNX Runtime with the fake-quant module."""

    model: onnx.ModelProto
    float_model: onnx.ModelProto
    plan: QuantPlan
    path: Path | None = None
    parity: dict = field(default_factory=dict)


def to_plan(qat: QATGraph) -> tuple[onnx.ModelProto, QuantPlan]:
    """The (float model, plan) pair a trained QATGraph stands for."""
    values = qat.float_tensors()
    model = onnx.ModelProto()
    model.CopyFrom(qat.proto)
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name].astype(np.float32), init.name))
    plan = copy.deepcopy(qat.plan)
    for name, t in qat.plan.tensors.items():
        fq = qat.quantizer(name)
        if fq is None:
            continue
        q = fq.qparams()
        lo, hi = q.representable_range
        rng = (float(np.min(lo)), float(np.max(hi)))
        method = t.method if (t.method or "").startswith("shared:") else ("lsq" if fq.learn_scale else t.method)
        plan.tensors[name] = TensorPlan(name, t.role, q, rng, method)
    for b_name, (x_name, w_name) in qat._bias_of.items():
        b = values.get(b_name, qat.tensor(b_name).detach().cpu().numpy())
        plan.tensors[b_name] = bias_plan(b_name, b, plan.tensors[x_name].qparams.scale, plan.tensors[w_name])
    plan.model_fingerprint = fingerprint(model)
    return model, plan


def output_parity(model: onnx.ModelProto, qat: QATGraph, plan: QuantPlan, inputs: Any) -> dict:
    """ONNX Runtime vs the fake-quant module on `inputs`: worst difference in steps of each output's
    8-bit grid over its calibrated range (the parity unit of `lowbit.verify`), and top-1 agreement."""
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    args = tuple(a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a)) for a in args)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(qat.input_names, args)})
    was = qat.training
    qat.eval()
    with torch.no_grad():
        ref = qat(*args)
    qat.train(was)
    ref = ref if isinstance(ref, tuple) else (ref,)
    result = {}
    for name, o, r in zip(qat.output_names, got, ref):
        r = r.numpy()
        step = output_step(plan.observed.get(name, (float(r.min()), float(r.max()))))
        steps = np.abs(o - r) / step
        entry = {"max_steps": float(steps.max()), "within_one_step": float(np.mean(steps <= 1.0 + 1e-6))}
        if o.ndim == 2:
            entry["top1_agreement"] = float(np.mean(o.argmax(1) == r.argmax(1)))
        result[name] = entry
    return result


def export(qat: QATGraph, example_inputs: Any = None, path: str | Path | None = None) -> QATExport:
    """Ship a trained QAT module as lowbit's QDQ ONNX (through the plan, like PTQ).

    With `example_inputs`, also measures ONNX Runtime against the fake-quant module on them
    (`.parity`: worst output difference in output quantization steps).

    >>> out = lowbit.qat.export(qat, x_test[:256], "cnn.qat.onnx")   # doctest: +SKIP
    >>> out.parity["output"]["max_steps"] <= 1.0                      # doctest: +SKIP
    True
    """
    if path is not None:
        check_output_path(path)
    float_model, plan = to_plan(qat)
    qmodel = emit_qdq(float_model, plan)
    written = atomic_write_bytes(path, qmodel.SerializeToString()) if path is not None else None
    parity = output_parity(qmodel, qat, plan, example_inputs) if example_inputs is not None else {}
    return QATExport(qmodel, float_model, plan, written, parity)
