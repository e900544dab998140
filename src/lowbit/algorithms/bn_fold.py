"""Batch-norm folding: BatchNormalization after a Conv / Gemm becomes part of its weights and bias.

Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference" (§3.2), and Krishnamoorthi 2018, "Quantizing deep convolutional networks for
efficient inference" (§2.4). No knob: folding is exact.

    y = gamma * (W x + b - mean) / sqrt(var + eps) + beta
      = (W * k) x + (b - mean) * k + beta,      k = gamma / sqrt(var + eps)   (per output channel)

The prepare step normally folds batch norms already (ONNX Runtime's basic optimizer); this is for
models prepared without optimization. A BatchNormalization with no foldable layer in front of it
stays in the graph and is logged (it then runs in float).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from lowbit.algorithms._onnx_weights import (bias_value, layer_axes, own_weights, set_bias, set_initializer,
                                             single_consumer)
from lowbit.plan.algorithm import Algorithm, AlgorithmContext, register_algorithm
from lowbit.onnx.graph import GraphIndex
from lowbit.plan.quant_plan import QuantPlan

log = logging.getLogger(__name__)


def _foldable(bn: onnx.NodeProto, g: GraphIndex) -> tuple[onnx.NodeProto, list[np.ndarray]] | None:
    """The layer `bn` folds into and its (scale, bias, mean, var) values, or None."""
    if g.attr(bn, "training_mode", 0) or len(bn.output) > 1 and any(bn.output[1:]):
        return None
    layer = g.producer.get(bn.input[0])
    if layer is None or layer_axes(layer, g) is None or single_consumer(g, bn.input[0]) is not bn:
        return None
    params = [g.constant(name) for name in bn.input[1:5]]
    if any(p is None for p in params):
        return None
    n = g.constant(layer.input[1]).shape[layer_axes(layer, g)[0]]
    if any(p.size != n for p in params):
        return None
    if layer.op_type == "Gemm" and len(layer.input) > 2 and layer.input[2]:
        c = g.constant(layer.input[2])
        if c is None or c.size not in (1, n):
            return None
    return layer, [p.reshape(-1).astype(np.float64) for p in params]


def fold_batch_norms(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` with every foldable BatchNormalization folded into the Conv / Gemm in
    front of it. Returns the model and the names of the batch norms that stay."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    folded: set[str] = set()  # outputs of folded batch norms (their layer writes them now)
    kept: list[str] = []
    for bn in [n for n in m.graph.node if n.op_type == "BatchNormalization"]:
        g = GraphIndex(m)
        found = _foldable(bn, g)
        if found is None:
            kept.append(bn.name)
            continue
        layer, (gamma, beta, mean, var) = found
        own_weights(m, layer)
        g = GraphIndex(m)
        k = gamma / np.sqrt(var + float(g.attr(bn, "epsilon", 1e-5)))  # (C,)
        out_axis = layer_axes(layer, g)[0]
        w = g.constant(layer.input[1]).astype(np.float64)
        shape = [1] * w.ndim
        shape[out_axis] = -1
        set_initializer(m, layer.input[1], w * k.reshape(shape))
        b = bias_value(layer, g).astype(np.float64)
        # Gemm: y = alpha * A B + C, so the BN's shift goes into C only (alpha scales A B alone)
        set_bias(m, layer, g, ((b - mean) * k + beta).astype(np.float32))
        stale = layer.output[0]
        layer.output[0] = bn.output[0]
        _drop_value_info(m, stale)
        folded.add(bn.output[0])
    kept_nodes = [n for n in m.graph.node if not (n.op_type == "BatchNormalization" and n.output[0] in folded)]
    del m.graph.node[:]
    m.graph.node.extend(kept_nodes)
    _drop_unused_initializers(m)
    return m, kept


def _drop_value_info(m: onnx.ModelProto, name: str) -> None:
    keep = [v for v in m.graph.value_info if v.name != name]
    del m.graph.value_info[:]
    m.graph.value_info.extend(keep)


def _drop_unused_initializers(m: onnx.ModelProto) -> None:
    used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    keep = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)


@register_algorithm("bn_fold")
@dataclass(frozen=True)
class BatchNormFolding(Algorithm):
    """Fold BatchNormalization into the Conv / Gemm before it (Jacob et al. 2018; Krishnamoorthi
    2018). Knob: none, folding is exact. Batch norms with no layer to fold into are logged.

    >>> QuantConfig(algorithms=(BatchNormFolding(), CrossLayerEqualization()))
    """

    stage = "float"

    def apply(self, model: onnx.ModelProto, plan: QuantPlan | None,
              ctx: AlgorithmContext) -> tuple[onnx.ModelProto, QuantPlan | None]:
        out, kept = fold_batch_norms(model)
        if kept:
            log.warning("%d BatchNormalization node(s) have no Conv/Gemm to fold into and stay in float: %s",
                        len(kept), ", ".join(kept[:5]) + (" ..." if len(kept) > 5 else ""))
        return out, plan
