"""Empirical bias correction.

Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction" (§4.2),
empirical variant (as in Finkelstein et al. 2019 and AIMET): quantization shifts the mean of a layer's
output, E[W~ x~] != E[W x]; the shift, measured on calibration data per output channel, is subtracted
from the layer's bias. The knob that matters: `passes`.

Each layer's error is measured on its own: the simulation of the plan (emit_simulation) gets, next
to every quantized layer, the uncorrected float layer reading the same quantized input, and the
per-channel mean of their difference is the layer's shift (compared before the output is quantized
and before any Relu/Clip the plan folded into the layer). Corrections made this way do not depend
on each other to first order, so one calibration pass corrects every layer; correcting the total
shift (quantized model vs float model) instead would need one pass per layer in topological order
(about 50 passes for MobileNetV2), and correcting all of those totals at once over-corrects: a layer
would also remove the shift its already-corrected inputs no longer have. Later `passes` re-measure
with the corrections in place (the quantized inputs move a little). Only per-channel sums are
kept: memory does not grow with the calibration data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.algorithms._onnx_weights import bias_name, bias_value, has_constant_bias, layer_axes, set_bias
from lowbit.data import Batch
from lowbit.emit.qdq import emit_simulation
from lowbit.errors import ConfigError, DataError
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.names import Names
from lowbit.onnx.session import run_batch, session, with_outputs
from lowbit.plan.algorithm import Algorithm, AlgorithmContext, register_algorithm
from lowbit.plan.planner import bias_plan
from lowbit.plan.quant_plan import QuantPlan
from lowbit.target.memory import release_free_memory

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
        if not has_constant_bias(node, g):
            continue
        act = g.nodes.get(folded_by.get(node.name, ""))
        layers.append(Layer(node.name, node.output[0], act.output[0] if act is not None else node.output[0]))
    return layers


def _channel_sums(v: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-channel sums of a (N, C, ...) or (N, C) tensor and the number of values per channel."""
    v = np.asarray(v, dtype=np.float64)
    flat = np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)  # (C, N * spatial)
    return flat.sum(axis=1), flat.shape[1]


def channel_means(model: onnx.ModelProto | bytes, names: list[str], calib) -> list[np.ndarray]:
    """Mean per channel (axis 1) of the tensors `names` over all calibration batches, streaming.
    `model` may be a serialized model that already outputs `names`."""
    sess = session(model if isinstance(model, bytes) else with_outputs(model, names), arena=False)
    del model
    return _session_means(sess, names, calib)


def _session_means(sess, names: list[str], calib) -> list[np.ndarray]:
    """`channel_means` on a session that outputs `names`."""
    sums: list[np.ndarray | None] = [None] * len(names)
    counts = [0] * len(names)
    batch: Batch
    for batch in calib:
        values = run_batch(sess, batch, names)
        for k, v in enumerate(values):
            s, n = _channel_sums(v)
            sums[k] = s if sums[k] is None else sums[k] + s
            counts[k] += n
        values = v = None  # freed before the next batch's are computed, and given back: the C
        release_free_memory()  # heap would grow over the pass (ResNet-18: ~200 MB)
    if not counts or counts[0] == 0:
        raise DataError("bias correction needs calibration data; the calibration source gave no samples")
    return [s / n for s, n in zip(sums, counts)]


def _with_reference_layers(sim: onnx.ModelProto, reference: onnx.ModelProto,
                           layers: list[Layer]) -> tuple[onnx.ModelProto, list[str]]:
    """`sim` plus, for every layer, its `reference` (uncorrected float) version reading the same
    quantized input, and the difference of the two outputs: (quantized - float) on identical inputs."""
    g = GraphIndex(reference)
    by_name = {n.name: n for n in sim.graph.node}
    sim_inits = {t.name: t for t in sim.graph.initializer}
    names = Names(sim)  # a node `fc` reading a weight `fc` would otherwise make `fc__float_ref` twice
    diffs = []
    for layer in layers:
        node, src = by_name[layer.node], g.nodes[layer.node]
        inputs = [node.input[0]]
        for slot in (1, 2):
            if len(src.input) > slot and src.input[slot]:
                name, value = src.input[slot], g.constant(src.input[slot])
                if not _same(sim_inits.get(name), value):  # else the reference reads the sim's own
                    name = names.fresh(f"{name}__float_ref")
                    sim.graph.initializer.append(numpy_helper.from_array(value, name))
                inputs.append(name)
        out = names.fresh(f"{layer.node}__float_ref")
        diff = names.fresh(f"{layer.node}__quant_error")
        sim.graph.node.extend([
            helper.make_node(src.op_type, inputs, [out], name=out, domain=src.domain),
            helper.make_node("Sub", [layer.sim_out, out], [diff], name=diff),
        ])
        sim.graph.node[-2].attribute.extend(src.attribute)
        diffs.append(diff)
    return sim, diffs


def _same(t: onnx.TensorProto | None, value: np.ndarray) -> bool:
    """Whether initializer `t` holds exactly `value`, bit for bit: weights already on the plan's grid
    (GPTQ's) are simulated as they are, and a second float copy would only cost memory."""
    if t is None:
        return False
    a = numpy_helper.to_array(t)
    return a.dtype == value.dtype and a.shape == value.shape and a.tobytes() == value.tobytes()


def mean_errors(model: onnx.ModelProto, plan: QuantPlan, calib, layers: list[Layer],
                reference: onnx.ModelProto | None = None) -> list[np.ndarray]:
    """Per layer, the per-channel mean of (quantized layer output - float layer output), both
    computed from the same quantized input (the simulation's): each layer's own error. The float
    layers are those of `reference` (default: `model`), the model before any correction."""
    sim, diffs = _with_reference_layers(emit_simulation(model, plan), reference or model, layers)
    release_free_memory()  # building the simulation's proto freed ~2x its size: gone before it is serialized
    # serialized once, without a second ModelProto copy, and both dropped before the session runs:
    # the simulation holds every weight twice (quantized and float reference)
    data = with_outputs(sim, diffs, copy=False).SerializeToString()
    del sim
    sess = session(data, arena=False)
    del data
    return _session_means(sess, diffs, calib)


def correct_biases(model: onnx.ModelProto, plan: QuantPlan, layers: list[Layer],
                   errors: list[np.ndarray]) -> onnx.ModelProto:
    """Subtract `errors` from the layers' biases (adding a bias where a layer has none) and rebuild
    their int32 bias entries in the plan."""
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
    (calibration passes through the simulation; later ones refine the corrections).

    >>> QuantConfig(algorithms=(CrossLayerEqualization(), BiasCorrection()))
    """

    stage = "plan"
    passes: int = 1

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
        m = model
        for k in range(self.passes):
            errors = mean_errors(m, plan, ctx.calib, layers, reference=model)
            log.info("bias correction pass %d: largest mean shift %.3g", k + 1,
                     max(float(np.abs(e).max()) for e in errors))
            if m is model:  # the copy is made once the first pass's simulation is gone
                m = onnx.ModelProto()
                m.CopyFrom(model)
            m = correct_biases(m, plan, layers, errors)
            ctx.progress("bias correction", k + 1, self.passes)
        return m, plan
