"""GPTQ rounding of the weight-only form's INT8 weights (`lowbit.emit.weight_storage`'s grid).

The weight-only form (every weighted layer 'w8': INT8 weights with a scale per group of 32 along
the reduction axis, FP32 arithmetic) ships where a static plan would make the file larger, run
slower than FP32, or lose its output's signal. Its weights were rounded to nearest. Where
calibration data is there, GPTQ rounds them instead, against each layer's FP32 inputs, which are
exactly what the layer reads in this form (activations stay float): the textbook GPTQ setting.
Measured on PP-OCRv4 rec (150 text lines, strings identical to FP32, activations float): its conv
weights rounded to nearest on the per-channel INT8 grid 0.953, by GPTQ 0.987.

The grid is the emitter's own (`weight_only_int8`: the group's largest weight at +-127, FP16
scales); each group keeps its largest weight where rounding put it, so the emitter, re-deriving
the scale from the rounded weights, finds the same grid and the same integers.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx

from lowbit.algorithms import _layer_data as ld
from lowbit.algorithms.gptq import GPTQ, one_blas_thread
from lowbit.config import QuantConfig
from lowbit.data import FeedSource
from lowbit.emit.weight_storage import weight_only_int8
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import weight_slots
from lowbit.plan.algorithm import AlgorithmContext
from lowbit.plan.quant_plan import QuantPlan
from lowbit.progress import Progress, null_progress

log = logging.getLogger(__name__)

# GPTQ's defaults: 1% dampening, columns in order. With act_order (the static recipe's) on these
# per-group grids PP-OCRv4 rec got worse than round-to-nearest (strings 0.907 vs 0.933). 256 rows
# per sample, not 1024: the Hessian sums were most of the time (rec, 64 lines: 17.7 -> 10.1 s) and
# no model lost from it (calibration SQNR of rec's weight-only form on 64 lines 26.8 -> 32.8 dB, its strings
# 0.980 -> 0.987; zoo: magika 1.000 -> 0.998, basic-pitch 0.946 -> 0.942, MobileNetV2's
# int8-dynamic logits 35.0 dB either way)
ROUNDING = GPTQ(percdamp=0.01, act_order=False, rows_per_sample=256)
QMAX = 127  # weight_only_int8: symmetric over [-127, 127]
WEIGHT_ONLY_GPTQ = "weight-only-gptq"  # its record in a plan's decisions.algorithm_choices


def gptq_weight_only(model: onnx.ModelProto, plan: QuantPlan, calib: FeedSource, seed: int = 0,
                     progress: Progress = null_progress) -> tuple[onnx.ModelProto, int]:
    """(a copy of `model` whose 'w8' layers' weights lie on their weight-only INT8 grid, GPTQ-rounded;
    how many layers were rounded). Layers GPTQ cannot take keep round-to-nearest."""
    layers, skipped = ld.find_layers(model, plan, weight_only=True)
    # Identical weights in several layers (basic-pitch's constant-Q filter bank, one copy per octave)
    # are stored once (lowbit.emit.shared_constants); rounded per layer they would differ, and the
    # file would hold each copy: 154 KB -> 304 KB there. They keep round-to-nearest.
    copies = Counter((lay.w.shape, lay.w.tobytes()) for lay in layers)
    for lay in layers:
        if copies[(lay.w.shape, lay.w.tobytes())] > 1:
            skipped[lay.node] = "its weight is identical to another layer's and is stored once"
    layers = [lay for lay in layers if lay.node not in skipped]
    for name, why in skipped.items():
        log.info("weight-only gptq: %s keeps round-to-nearest: %s", name, why)
    if not layers:
        return model, 0
    g = GraphIndex(model)
    nearest: dict[str, np.ndarray] = {}  # weight -> round-to-nearest integers, stored layout
    steps: dict[str, np.ndarray] = {}  # weight -> each weight's step, stored layout
    for layer in layers:
        axis = weight_slots(g.nodes[layer.node], g)[2]
        stored = weight_only_int8(layer.w, axis)
        steps[layer.weight] = np.broadcast_to(stored.scale.astype(np.float32), stored.ints.shape).reshape(layer.w.shape)
        nearest[layer.weight] = stored.ints.reshape(layer.w.shape)

    def grid_of(layer: ld.Layer) -> tuple[np.ndarray, np.ndarray, int, int]:
        s = steps[layer.weight]
        return s, np.zeros(s.shape, np.int64), -QMAX, QMAX

    def fixed_of(layer: ld.Layer) -> np.ndarray:
        """Each group's largest weight stays at +-127 (it defines the grid the emitter re-derives);
        GPTQ feeds the error of holding it there to the weights after it."""
        rtn = nearest[layer.weight].astype(np.float32)
        return np.where(np.abs(rtn) == QMAX, rtn, np.nan).astype(np.float32)

    ctx = AlgorithmContext(calib=calib, config=QuantConfig(), progress=progress, seed=seed)
    with one_blas_thread():
        rounded = ROUNDING.round_layers(model, layers, ctx, grid_of, fixed_of)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for name, ints in rounded.items():
        ld.set_initializer(out, name, (ints.astype(np.float32) * steps[name]).astype(np.float32))
    return out, len(rounded)

