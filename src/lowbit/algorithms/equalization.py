"""Cross-layer equalization (CLE) and high-bias absorption.

Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction" (§4.1,
§4.2.2). The knob that matters: `relu6_to_relu`.

For two layers y1 = W1 x + b1, y2 = W2 f(y1) + b2 with f positive-homogeneous per channel
(Relu, Clip(0, inf), nothing, pooling), f(y / s) = f(y) / s for s > 0, so scaling output channel i of
layer 1 by 1/s_i and input channel i of layer 2 by s_i leaves the function unchanged. With
per-channel weight ranges r1_i, r2_i, s_i = sqrt(r1_i / r2_i) gives both the range sqrt(r1_i r2_i).
Sweeps over all pairs (a depthwise layer sits in two) repeat until the scales stop changing.

ReLU6 = Clip(0, 6) is not positive-homogeneous: after scaling it would have to clip channel i at
6 / s_i, which one ONNX Clip cannot express. By default such pairs are left alone, which keeps the
float function exactly. `relu6_to_relu=True` does what Nagel et al. do: the Clip becomes a Relu
(changing the float function where the pre-activation exceeds 6) and the pair is equalized; the
quantized output range still clips at the calibrated maximum.

High-bias absorption (`absorb_high_bias=True`, needs calibration data): where layer 1's
pre-activation y_i is at least c_i > 0, relu(y_i) = relu(y_i - c_i) + c_i, so c_i moves from b1 into
b2 (+ W2 c). The paper bounds c_i by the batch norm's beta - 3 gamma; batch norms are folded before
lowbit sees the model, so c_i is the minimum observed on the calibration data. It applies only through
a plain Relu into a layer without zero padding (padding would see 0, not the removed c_i); it is exact
on every input whose pre-activation stays above the calibrated minimum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from lowbit.algorithms._onnx_weights import (bias_value, has_constant_bias, layer_axes, own_weights, set_bias,
                                             set_initializer, single_consumer)
from lowbit.errors import ConfigError
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import clip_bounds
from lowbit.onnx.session import run_batch, session, with_outputs
from lowbit.plan.algorithm import Algorithm, AlgorithmContext, register_algorithm
from lowbit.plan.quant_plan import QuantPlan

log = logging.getLogger(__name__)

# per-channel ops between the two layers that commute with a positive per-channel scale
_POOLS = {"GlobalAveragePool", "MaxPool", "GlobalMaxPool"}


@dataclass
class Pair:
    """Two layers with per-channel-homogeneous ops between them."""

    first: onnx.NodeProto
    second: onnx.NodeProto
    between: list[onnx.NodeProto]
    bounded: list[onnx.NodeProto]  # Clip(0, hi) nodes that must become Relu to equalize

    @property
    def absorbable(self) -> bool:
        acts = [n for n in self.between if n.op_type in ("Relu", "Clip")]
        return len(acts) == 1 and all(n.op_type in ("Relu", "Clip", "GlobalAveragePool", "Flatten")
                                      for n in self.between)


def _in_channels(node: onnx.NodeProto, g: GraphIndex) -> int:
    w = g.constant(node.input[1])
    if node.op_type == "Conv":
        return int(w.shape[1]) * int(g.attr(node, "group", 1))
    return int(w.shape[layer_axes(node, g)[1]])


def _no_padding(node: onnx.NodeProto, g: GraphIndex) -> bool:
    if node.op_type != "Conv":
        return True
    auto_pad = g.attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return not any(g.attr(node, "pads", None) or [0]) and auto_pad in ("NOTSET", "VALID")


def find_pairs(g: GraphIndex) -> tuple[list[Pair], list[str]]:
    """All equalizable (layer, ops, layer) pairs in graph order, and why others were passed over
    (bounded clips, for the log)."""
    pairs: list[Pair] = []
    for node in g.graph.node:
        if node.op_type not in ("Conv", "Gemm") or layer_axes(node, g) is None or not has_constant_bias(node, g):
            continue
        between: list[onnx.NodeProto] = []
        t = node.output[0]
        nxt = single_consumer(g, t)
        ok = True
        while nxt is not None and nxt.op_type not in ("Conv", "Gemm"):
            op = nxt.op_type
            if op in ("Relu", "Clip"):
                lo, _ = clip_bounds(nxt, g)
                ok = lo == 0.0 or (op == "Clip" and lo is None and clip_bounds(nxt, g)[1] is None)
            elif op == "Flatten":
                ok = bool(between) and between[-1].op_type in ("GlobalAveragePool", "GlobalMaxPool")
            else:
                ok = op in _POOLS
            if not ok:
                break
            between.append(nxt)
            t = nxt.output[0]
            nxt = single_consumer(g, t)
        if (not ok or nxt is None or layer_axes(nxt, g) is None or nxt.input[0] != t
                or not has_constant_bias(nxt, g)):
            continue
        n = g.constant(node.input[1]).shape[layer_axes(node, g)[0]]
        flat = any(b.op_type == "Flatten" for b in between)
        if _in_channels(nxt, g) != n or (node.op_type, nxt.op_type) == ("Gemm", "Conv") or (
                (node.op_type, nxt.op_type) == ("Conv", "Gemm") and not flat):
            continue
        bounded = [b for b in between if b.op_type == "Clip" and clip_bounds(b, g)[1] is not None]
        pairs.append(Pair(node, nxt, between, bounded))
    return pairs, [p.first.name for p in pairs if p.bounded]


class _Weights:
    """Float64 working copies of the layers' weights and biases, written back once at the end."""

    def __init__(self, g: GraphIndex) -> None:
        self.g = g
        self.w: dict[str, np.ndarray] = {}
        self.b: dict[str, np.ndarray] = {}

    def weight(self, node: onnx.NodeProto) -> np.ndarray:
        if node.name not in self.w:
            self.w[node.name] = self.g.constant(node.input[1]).astype(np.float64)
            self.b[node.name] = bias_value(node, self.g).astype(np.float64)
        return self.w[node.name]

    def out_view(self, node: onnx.NodeProto) -> tuple[np.ndarray, int]:
        """The weight with output channels on axis 0, (C_out, -1); and its original axis."""
        axis = layer_axes(node, self.g)[0]
        return np.moveaxis(self.weight(node), axis, 0), axis

    def in_view(self, node: onnx.NodeProto) -> np.ndarray:
        """A view with axes (groups, out per group, in per group, rest) (Conv) or (1, out, in, 1)
        (Gemm); input channel c = group * in_per_group + j."""
        w = self.weight(node)
        if node.op_type == "Conv":
            groups = int(self.g.attr(node, "group", 1))
            view = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1)
        else:
            out_axis, in_axis = layer_axes(node, self.g)
            view = np.moveaxis(w, (out_axis, in_axis), (0, 1))[None, :, :, None]
        if not np.shares_memory(view, w):  # the in-place updates below must reach the weights
            raise RuntimeError(f"{node.name}: weight view is a copy")
        return view

    def write(self, model: onnx.ModelProto) -> None:
        nodes = {n.name: n for n in model.graph.node}
        for name, w in self.w.items():
            node = nodes[name]
            set_initializer(model, node.input[1], w)
            set_bias(model, node, self.g, self.b[name])


def _equalize(pair: Pair, ws: _Weights) -> float:
    """Equalize one pair in place; returns max |log s| (0 when already equal)."""
    w1, _ = ws.out_view(pair.first)
    r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)                 # (C,)
    w2 = ws.in_view(pair.second)                                        # (G, O/G, C/G, K)
    r2 = np.abs(w2).max(axis=(1, 3)).reshape(-1)                        # (C,)
    s = np.ones_like(r1)
    ok = (r1 > 0) & (r2 > 0)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    w1 /= s.reshape((-1,) + (1,) * (w1.ndim - 1))                       # views: updates ws.w in place
    ws.b[pair.first.name] /= s
    w2 *= s.reshape(w2.shape[0], 1, w2.shape[2], 1)
    return float(np.abs(np.log(s)).max()) if s.size else 0.0


def equalize_model(model: onnx.ModelProto, relu6_to_relu: bool = False, max_sweeps: int = 50,
                   tolerance: float = 1e-4) -> tuple[onnx.ModelProto, list[Pair]]:
    """A copy of `model` with every equalizable pair equalized; returns it and the pairs used."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for node in m.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            own_weights(m, node)
    g = GraphIndex(m)
    pairs, bounded = find_pairs(g)
    if bounded and not relu6_to_relu:
        log.info("CLE leaves %d pair(s) behind a bounded Clip (ReLU6) alone to keep the float function exact; "
                 "relu6_to_relu=True equalizes them too", len(bounded))
        pairs = [p for p in pairs if not p.bounded]
    ws = _Weights(g)
    for sweep in range(max_sweeps):
        change = max((_equalize(p, ws) for p in pairs), default=0.0)
        if change < tolerance:
            break
    log.info("CLE equalized %d layer pairs in %d sweep(s)", len(pairs), sweep + 1 if pairs else 0)
    for p in pairs:
        for clip in p.bounded:
            _to_relu(clip)
    ws.write(m)
    return m, pairs


def _to_relu(node: onnx.NodeProto) -> None:
    node.op_type = "Relu"
    del node.input[1:]
    del node.attribute[:]


def absorb_high_bias(model: onnx.ModelProto, pairs: list[Pair], calib) -> onnx.ModelProto:
    """Move the part of layer 1's bias that its Relu never cuts (the observed minimum of its
    pre-activation, where positive) into layer 2's bias. Pairs must be in graph order."""
    g = GraphIndex(model)
    nodes = {n.name: n for n in model.graph.node}
    todo = [p for p in pairs if p.absorbable and _no_padding(p.second, g)]
    if not todo:
        return model
    names = [nodes[p.first.name].output[0] for p in todo]
    sess = session(with_outputs(model, names), optimize=False, arena=False)
    lows: dict[str, np.ndarray] = {}
    for batch in calib:
        for name, v in zip(names, run_batch(sess, batch, names)):
            v = np.moveaxis(np.asarray(v), 1, 0).reshape(v.shape[1], -1).min(axis=1)  # (C,)
            lows[name] = np.minimum(lows[name], v) if name in lows else v
    ws = _Weights(g)
    # absorbing into a layer leaves its pre-activation unchanged (bias + W c, input - c), so the minima
    # measured once before any absorption stay valid for every pair
    for p, name in zip(todo, names):
        first, second = nodes[p.first.name], nodes[p.second.name]
        ws.weight(first), ws.weight(second)
        c = np.maximum(lows[name], 0.0)                                          # (C,)
        ws.b[first.name] -= c
        w2 = ws.in_view(second)                                                  # (G, O/G, C/G, K)
        delta = (w2 * c.reshape(w2.shape[0], 1, w2.shape[2], 1)).sum(axis=(2, 3)).reshape(-1)
        ws.b[second.name] += delta
    ws.write(model)
    return model


@register_algorithm("cle")
@dataclass(frozen=True)
class CrossLayerEqualization(Algorithm):
    """Cross-layer equalization (Nagel et al. 2019): rescale consecutive Conv/Gemm layers so their
    per-channel weight ranges match; the float function is unchanged. Knob: `relu6_to_relu`
    (also equalize through ReLU6 by turning it into Relu, as the paper does: not exact).
    `absorb_high_bias` adds the paper's high-bias absorption, with bounds from calibration data.

    >>> QuantConfig(algorithms=(CrossLayerEqualization(), BiasCorrection()))
    """

    stage = "float"
    relu6_to_relu: bool = False
    absorb_high_bias: bool = False
    max_sweeps: int = 50

    def __post_init__(self) -> None:
        if self.max_sweeps < 1:
            raise ConfigError(f"max_sweeps must be at least 1; got {self.max_sweeps}")

    def apply(self, model: onnx.ModelProto, plan: QuantPlan | None,
              ctx: AlgorithmContext) -> tuple[onnx.ModelProto, QuantPlan | None]:
        out, pairs = equalize_model(model, self.relu6_to_relu, self.max_sweeps)
        if self.absorb_high_bias:
            if ctx.calib is None:
                raise ConfigError("absorb_high_bias needs calibration data (calib_data) to bound the activations")
            out = absorb_high_bias(out, pairs, ctx.calib)
        return out, plan
