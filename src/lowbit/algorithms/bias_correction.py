"""Empirical bias correction.

Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction" (§4.2),
empirical variant (as in Finkelstein et al. 2019 and AIMET): quantization shifts the mean of a layer's
output, E[W~ x~] != E[W x]; the shift, measured on calibration data per output channel, is subtracted
from the layer's bias. The knob that matters: `passes`.

The quantized outputs come from lowbit's own simulation of the plan (emit_simulation), compared
before the output is quantized and before any Relu/Clip (which the plan may have folded into the
layer: the simulation's layer output is then the activation's tensor, still unclipped). All layers
are corrected in each pass from means measured with the previous passes' corrections in place, so
corrections upstream are seen downstream; after `passes` passes the correction of the first
`passes` layers of every path equals the layer-by-layer (topological) one, and the rest is
second order. Only per-channel sums are kept: memory does not grow with the calibration data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from lowbit.algorithms._onnx_weights import bias_name, bias_value, layer_axes, set_bias
from lowbit.algorithms.base import Algorithm, AlgorithmContext, register_algorithm
from lowbit.data import Batch
from lowbit.errors import ConfigError, DataError
from lowbit.graph import GraphIndex
from lowbit.plan import QuantPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layer:
    """A quantized layer, the tensor holding its pre-activation output in the float model, and the
    tensor holding the same (unquantized, unclipped) value in the plan's simulation."""

    node: str
    float_out: str
    sim_out: str


def corrected_layers(model: onnx.ModelProto, plan: QuantPlan) -> list[Layer]:
    """The int8 Conv / Gemm layers with a constant weight, in graph (topological) order."""
    g = GraphIndex(model)
    folded_by = {producer: act for act, producer in plan.folded.items()}
    layers = []
    for node in g.graph.node:
        node_plan = plan.nodes.get(node.name)
        if (node.op_type not in ("Conv", "Gemm") or node_plan is None or node_plan.precision != "int8"
                or layer_axes(node, g) is None):
            continue
        if node.op_type == "Gemm" and bias_name(node) and g.constant(bias_name(node)) is None:
            continue
        act = g.nodes.get(folded_by.get(node.name, ""))
        layers.append(Layer(node.name, node.output[0], act.output[0] if act is not None else node.output[0]))
    return layers


def _channel_sums(v: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-channel sums of a (N, C, ...) or (N, C) tensor and the number of values per channel."""
    v = np.asarray(v, dtype=np.float64)
    flat = np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)  # (C, N * spatial)
    return flat.sum(axis=1), flat.shape[1]


def channel_means(model: onnx.ModelProto, names: list[str], calib) -> list[np.ndarray]:
    """Mean per channel (axis 1) of the tensors `names` over all calibration batches, streaming."""
    from lowbit.observe import run_batch, session, with_outputs

    sess = session(with_outputs(model, names))
    sums: list[np.ndarray | None] = [None] * len(names)
    counts = [0] * len(names)
    batch: Batch
    for batch in calib:
        for k, v in enumerate(run_batch(sess, batch, names)):
            s, n = _channel_sums(v)
            sums[k] = s if sums[k] is None else sums[k] + s
            counts[k] += n
    if not counts or counts[0] == 0:
        raise DataError("bias correction needs calibration data; the calibration source gave no samples")
    return [s / n for s, n in zip(sums, counts)]


def mean_errors(model: onnx.ModelProto, plan: QuantPlan, calib, layers: list[Layer],
                float_means: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Per layer, the per-channel mean of (simulated quantized output - float output)."""
    from lowbit.emit.qdq import emit_simulation

    if float_means is None:
        float_means = channel_means(model, [l.float_out for l in layers], calib)
    sim_means = channel_means(emit_simulation(model, plan), [l.sim_out for l in layers], calib)
    return [q - f for q, f in zip(sim_means, float_means)]


def correct_biases(model: onnx.ModelProto, plan: QuantPlan, layers: list[Layer],
                   errors: list[np.ndarray]) -> onnx.ModelProto:
    """Subtract `errors` from the layers' biases (adding a bias where a layer has none) and rebuild
    their int32 bias entries in the plan."""
    from lowbit.planner import bias_plan

    for layer, err in zip(layers, errors):
        g = GraphIndex(model)
        node = g.nodes[layer.node]
        b = (bias_value(node, g).astype(np.float64) - err).astype(np.float32)
        old = bias_name(node)
        planned = old is not None and old in plan.tensors
        name = set_bias(model, node, g, b)
        x_plan, w_plan = plan.activation(node.input[0]), plan.tensors.get(node.input[1])
        # a bias that stayed float (its input is not quantized) stays float; a new one follows the layer
        if x_plan is not None and w_plan is not None and (planned or old is None):
            plan.tensors[name] = bias_plan(name, b, x_plan.qparams.scale, w_plan)
    return model


@register_algorithm("bias_correction")
@dataclass(frozen=True)
class BiasCorrection(Algorithm):
    """Empirical bias correction (Nagel et al. 2019, §4.2): remove the mean shift quantization adds
    to every quantized Conv / Gemm output, measured on the calibration data. Knob: `passes`
    (calibration passes through the simulation; each one refines the corrections downstream).

    >>> QuantConfig(algorithms=(CrossLayerEqualization(), BiasCorrection()))
    """

    stage = "plan"
    passes: int = 2

    def __post_init__(self) -> None:
        if self.passes < 1:
            raise ConfigError(f"BiasCorrection.passes must be at least 1; got {self.passes}")

    def apply(self, model: onnx.ModelProto, plan: QuantPlan | None,
              ctx: AlgorithmContext) -> tuple[onnx.ModelProto, QuantPlan | None]:
        if plan is None:
            raise ConfigError("BiasCorrection runs on a plan (stage 'plan'); it got none")
        if ctx.calib is None:
            raise ConfigError("BiasCorrection needs calibration data (calib_data)")
        layers = corrected_layers(model, plan)
        if not layers:
            return model, plan
        m = onnx.ModelProto()
        m.CopyFrom(model)
        float_means = channel_means(m, [l.float_out for l in layers], ctx.calib)
        for k in range(self.passes):
            errors = mean_errors(m, plan, ctx.calib, layers, float_means)
            log.info("bias correction pass %d: largest mean shift %.3g", k + 1,
                     max(float(np.abs(e).max()) for e in errors))
            m = correct_biases(m, plan, layers, errors)
            ctx.progress("bias correction", k + 1, self.passes)
        return m, plan
