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
from lowbit.onnx.session import run_batch, session
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


def channel_means(model: onnx.ModelProto, names: list[str], calib) -> list[np.ndarray]:
    """Mean per channel (axis 1) of the tensors `names` over all calibration batches, streaming."""
    m, sums = _with_channel_sums(model, names)
    sess = session(m.SerializeToString(), arena=False)
    del m
    return _session_means(sess, sums, calib)


def _with_channel_sums(model: onnx.ModelProto, names: list[str], copy: bool = True
                       ) -> tuple[onnx.ModelProto, list[tuple[str, str]]]:
    """`model` that also outputs, for each (N, C, ...) tensor of `names`, its sums per sample and
    channel (N, C) and the shape (N, C, S) they were taken over: the reduction runs inside ONNX
    Runtime, so a CNN's full feature maps (MobileNetV2: ~30 MB per sample) are never copied out.
    Only the (N, C) sums leave the run, to be added up in float64."""
    if copy:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    else:
        m = model
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    fresh = Names(m).fresh
    keep_two = fresh("channel_sums__shape")
    m.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), keep_two))
    axes = fresh("channel_sums__axes")
    if opset >= 13:  # ReduceSum's axes became an input in opset 13
        m.graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axes))
    outputs = []
    for name in names:
        flat, total, shape = (fresh(f"{name}__{s}") for s in ("flat", "channel_sums", "flat_shape"))
        reduce = (helper.make_node("ReduceSum", [flat, axes], [total], keepdims=0) if opset >= 13
                  else helper.make_node("ReduceSum", [flat], [total], axes=[2], keepdims=0))
        m.graph.node.extend([helper.make_node("Reshape", [name, keep_two], [flat]), reduce,
                             helper.make_node("Shape", [flat], [shape])])
        m.graph.output.extend([helper.make_tensor_value_info(total, onnx.TensorProto.FLOAT, None),
                               helper.make_tensor_value_info(shape, onnx.TensorProto.INT64, None)])
        outputs.append((total, shape))
    return m, outputs


def _session_means(sess, sums: list[tuple[str, str]], calib) -> list[np.ndarray]:
    """Per-channel means from a session made by `_with_channel_sums` (its (sums, shape) outputs)."""
    totals: list[np.ndarray | None] = [None] * len(sums)
    counts = [0] * len(sums)
    names = [n for pair in sums for n in pair]
    batch: Batch
    for batch in calib:
        values = run_batch(sess, batch, names)
        for k in range(len(sums)):
            s, shape = values[2 * k], values[2 * k + 1]
            s = np.asarray(s, dtype=np.float64).sum(axis=0)
            totals[k] = s if totals[k] is None else totals[k] + s
            counts[k] += int(shape[0]) * int(shape[2])
        values = None
        release_free_memory()  # the run's buffers go back: the C heap would grow over the pass
    if not counts or counts[0] == 0:
        raise DataError("bias correction needs calibration data; the calibration source gave no samples")
    return [s / n for s, n in zip(totals, counts)]


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
    sim, sums = _with_channel_sums(sim, diffs, copy=False)
    data = sim.SerializeToString()
    del sim
    sess = session(data, arena=False)
    del data
    return _session_means(sess, sums, calib)


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
