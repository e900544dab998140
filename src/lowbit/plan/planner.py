"""Plan stage: turn the selection and calibration statistics into a QuantPlan with explicit
scales and zero points for every quantized tensor."""

from __future__ import annotations

import logging

import numpy as np
import onnx

from lowbit.calibration import weight_range
from lowbit.calibration.collect import CalibrationStats
from lowbit.config import QuantConfig
from lowbit.core.dtypes import QDtype, int32
from lowbit.core.granularity import PerChannel, PerTensor
from lowbit.core.qparams import QParams
from lowbit.load.prepare import fingerprint
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import WEIGHTED_OPS, weight_slots
from lowbit.package import __version__
from lowbit.plan.quant_plan import QuantPlan, TensorPlan
from lowbit.plan.selection import Selection
from lowbit.target.cpu import target_traits

log = logging.getLogger(__name__)

# int32 bias values must stay well inside int32 so the accumulator cannot overflow.
BIAS_LIMIT = 2**30


def activation_plan(name: str, stats: CalibrationStats, config: QuantConfig, full_range: bool = False) -> TensorPlan:
    """`full_range`: the observed min / max instead of the calibration method's (clipped) range."""
    scheme = config.activations
    obs = stats.observers[name]
    lo, hi = obs.observed_range() if full_range else obs.range(scheme.dtype, scheme.symmetric)
    q = QParams.from_range(lo, hi, scheme.dtype, PerTensor(), scheme.symmetric, scheme.narrow)
    return TensorPlan(name, "activation", q, (float(lo), float(hi)),
                      "minmax" if full_range else scheme.calibration.registry_name)


def weight_plan(name: str, w: np.ndarray, axis: int, config: QuantConfig, dtype: QDtype | None = None) -> TensorPlan:
    scheme = config.weights
    gran = scheme.granularity
    if isinstance(gran, PerChannel):
        gran = PerChannel(axis)
    dtype = dtype or scheme.dtype
    lo, hi = weight_range(scheme.calibration, w, gran, dtype, scheme.symmetric)
    q = QParams.from_range(lo, hi, dtype, gran, scheme.symmetric, scheme.narrow)
    return TensorPlan(name, "weight", q, (float(w.min()), float(w.max())), scheme.calibration.registry_name)


def bias_plan(name: str, b: np.ndarray, x_scale: np.ndarray, w: TensorPlan) -> TensorPlan:
    """int32 bias on the accumulator's grid: scale = input scale x weight scale (per channel)."""
    scale = (np.float32(x_scale) * w.qparams.scale).astype(np.float32).reshape(-1)
    if scale.size == 1 and b.size > 1:
        scale = np.full(b.shape, scale.item(), dtype=np.float32)
    # a tiny weight scale (near-zero channel) can push the bias off the int32 grid: widen the step
    need = np.abs(b.reshape(-1)) / BIAS_LIMIT
    scale = np.maximum(scale, need.astype(np.float32))
    q = QParams(int32, PerChannel(0), scale, np.zeros(scale.shape, dtype=np.int64))
    return TensorPlan(name, "bias", q, (float(b.min()), float(b.max())), "derived")


# 7-bit signed grid, stored in int8: exact on AVX2's VPMADDUBSW (see lowbit.target.cpu).
SATURATION_SAFE = QDtype("int7", 7, True)


def is_depthwise(node: onnx.NodeProto, g: GraphIndex) -> bool:
    """Depthwise convolutions run on a kernel without int16 pair sums: they keep 8 bits."""
    if node.op_type != "Conv":
        return False
    w = g.initializers.get(node.input[1])
    return int(g.attr(node, "group", 1)) > 1 and w is not None and len(w.dims) > 1 and w.dims[1] == 1


def build_plan(model: onnx.ModelProto, selection: Selection, stats: CalibrationStats,
               config: QuantConfig) -> QuantPlan:
    """The static INT8 QuantPlan of `model` for `selection`, with ranges from `stats`."""
    g = GraphIndex(model)
    plan = QuantPlan(precision=config.precision, nodes=dict(selection.nodes), folded=dict(selection.folded),
                     config=config.to_dict(), model_fingerprint=fingerprint(model), lowbit_version=__version__)
    for name in selection.activations:
        plan.tensors[name] = activation_plan(name, stats, config, name in selection.full_range)
    for out, src in selection.shared.items():
        root = src
        while root in selection.shared:
            root = selection.shared[root]
        base = plan.tensors[root]
        plan.tensors[out] = TensorPlan(out, "activation", base.qparams, base.calibrated_range, f"shared:{root}")
    for name in selection.observed:
        if name in stats.observers:
            plan.observed[name] = tuple(float(v) for v in stats.observers[name].observed_range())

    saturates = target_traits(config.target).u8s8_saturates
    for node in g.graph.node:
        if node.op_type not in WEIGHTED_OPS or plan.nodes[node.name].precision != "int8":
            continue
        w_idx, b_idx, axis = weight_slots(node, g)
        if w_idx is None:
            continue
        w_name = node.input[w_idx]
        dtype = None
        if saturates and config.weights.dtype.bits == 8 and not is_depthwise(node, g):
            dtype = SATURATION_SAFE
            # appended: the node keeps why it is INT8 (a recipe's reason), the grid says why 7 bits
            plan.nodes[node.name].reason = (f"{plan.nodes[node.name].reason}; weights on a 7-bit grid because this "
                                            "CPU's u8 x s8 kernel (AVX2 without VNNI) saturates on full 8-bit weights")
        if w_name not in plan.tensors:
            plan.tensors[w_name] = weight_plan(w_name, g.constant(w_name), axis, config, dtype)
        x_plan = plan.activation(node.input[0])
        if b_idx is not None and x_plan is not None:
            b_name = node.input[b_idx]
            b = g.constant(b_name)
            if b is not None and b.ndim == 1 and b_name not in plan.tensors:
                plan.tensors[b_name] = bias_plan(b_name, b, x_plan.qparams.scale, plan.tensors[w_name])
    return plan
