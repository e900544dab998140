"""Outlier-channel splitting: the few input channels of a linear layer whose range dwarfs the rest
run in float, the others in integers.

BERT-like encoders have a handful of activation channels with a far larger range than the others
(in all-MiniLM-L6-v2 one or two GELU outputs per FFN reach 14-25 where the median channel peaks at
~1.5; a layer-norm channel does the same). One per-tensor scale then has to cover them, and the bulk
of the values share a dozen grid steps. Measured on MiniLM, the FFN down-projection inputs alone gave
~75% of the INT8 embedding error. Splitting (the decomposition of Dettmers et al. 2022,
"LLM.int8()", with the outliers found once on calibration data instead of per token) rewrites
`y = x W` as

    y = (x * mask) W' + Gather(x, idx) W[idx]        W' = W with rows idx zeroed

which is the same function: the integer MatMul reads `x * mask` (outlier channels zeroed, so its
range is calibrated on the bulk), and a float MatMul of k <= `max_channels` columns adds the outlier
channels' contribution exactly. Unlike SmoothQuant, no weight row grows, so the per-channel weight
grids do not coarsen. A channel is an outlier when its calibrated max |x| exceeds `ratio` times the
median channel's; tensors without one are left unchanged.

>>> model, split = OutlierSplit().split(model, calib)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.algorithms.smoothquant import channel_absmax
from lowbit.errors import ConfigError
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.names import Names
from lowbit.plan.algorithm import Algorithm, AlgorithmContext, register_algorithm
from lowbit.plan.quant_plan import QuantPlan
from lowbit.transformers.patterns import find_patterns

log = logging.getLogger(__name__)

MASK, IDX, INLIERS, OUTLIERS = "_inlier_mask", "_outlier_idx", "_inliers", "_outliers"


def outlier_channels(absmax: np.ndarray, ratio: float, max_channels: int) -> np.ndarray:
    """Indices (sorted) of the channels whose max |x| exceeds `ratio` x the median channel's, the
    largest `max_channels` at most."""
    med = max(float(np.median(absmax)), 1e-12)
    idx = np.nonzero(absmax > ratio * med)[0]
    return np.sort(idx[np.argsort(-absmax[idx], kind="stable")][:max_channels])


@register_algorithm("outlier-split")
@dataclass(frozen=True)
class OutlierSplit(Algorithm):
    """Float-stage rewrite: outlier input channels of linear MatMuls move to a small float MatMul.
    Knobs: `ratio` (channel max over median channel max that makes an outlier), `max_channels`
    per tensor (kept small: the float path costs k/K of the layer's FP32 time)."""

    ratio: float = 4.0
    max_channels: int = 8

    stage = "float"

    def __post_init__(self) -> None:
        if self.ratio <= 1.0 or not 1 <= self.max_channels < 16:
            raise ConfigError(f"OutlierSplit needs ratio > 1 and 1 <= max_channels < 16; "
                              f"got {self.ratio}, {self.max_channels}")

    def apply(self, model: onnx.ModelProto, plan: QuantPlan | None,
              ctx: AlgorithmContext) -> tuple[onnx.ModelProto, QuantPlan | None]:
        if ctx.calib is None:
            raise ConfigError("OutlierSplit needs calibration data to find the outlier channels.")
        return self.split(model, ctx.calib)[0], plan

    def split(self, model: onnx.ModelProto, calib) -> tuple[onnx.ModelProto, dict[str, list[int]]]:
        """(rewritten model, {input tensor: outlier channels}) for `model`'s linear MatMuls."""
        g = GraphIndex(model)
        groups: dict[str, list[str]] = {}
        for name in find_patterns(model).linear:
            node = g.nodes[name]
            if node.op_type == "MatMul" and len(g.consumers.get(node.input[1], [])) == 1:
                groups.setdefault(node.input[0], []).append(name)
        if not groups:
            return model, {}
        amax = channel_absmax(model, list(groups), calib)
        chosen = {x: outlier_channels(amax[x], self.ratio, self.max_channels) for x in groups}
        chosen = {x: idx for x, idx in chosen.items() if idx.size}
        if not chosen:
            return model, {}
        return _rewrite(model, {x: groups[x] for x in chosen}, chosen), {x: i.tolist() for x, i in chosen.items()}


def _rewrite(model: onnx.ModelProto, groups: dict[str, list[str]], chosen: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = GraphIndex(out)
    inits = {t.name: t for t in out.graph.initializer}
    made = Names(out)  # the split's tensors are named after x, y and w unless the model holds those names
    after: dict[str, list[onnx.NodeProto]] = {}
    for x, names in groups.items():
        idx = chosen[x]
        px = made.fresh_prefix(x, (MASK, IDX, INLIERS, OUTLIERS, "/InlierMask", "/OutlierGather"))
        mask = np.ones(g.constant(g.nodes[names[0]].input[1]).shape[0], np.float32)
        mask[idx] = 0.0
        out.graph.initializer.extend([numpy_helper.from_array(mask, px + MASK),
                                      numpy_helper.from_array(idx.astype(np.int64), px + IDX)])
        producer = g.producer.get(x)
        after.setdefault(producer.name if producer is not None else "", []).extend([
            helper.make_node("Mul", [x, px + MASK], [px + INLIERS], name=f"{px}/InlierMask"),
            helper.make_node("Gather", [x, px + IDX], [px + OUTLIERS], name=f"{px}/OutlierGather", axis=-1)])
        for name in names:
            node = g.nodes[name]
            w_name = node.input[1]
            y = node.output[0]
            rows_name = made.fresh(w_name + "_outlier_rows")
            py = made.fresh_prefix(y, (INLIERS, OUTLIERS))
            pn = made.fresh_prefix(name, ("/OutlierMatMul", "/OutlierAdd"))
            w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
            rows, w = w[idx].copy(), w.copy()
            w[idx] = 0.0
            inits[w_name].CopyFrom(numpy_helper.from_array(w, w_name))
            out.graph.initializer.append(numpy_helper.from_array(rows, rows_name))
            node.input[0], node.output[0] = px + INLIERS, py + INLIERS
            after.setdefault(name, []).extend([
                helper.make_node("MatMul", [px + OUTLIERS, rows_name], [py + OUTLIERS],
                                 name=f"{pn}/OutlierMatMul"),
                helper.make_node("Add", [py + INLIERS, py + OUTLIERS], [y], name=f"{pn}/OutlierAdd")])
    nodes = list(after.get("", []))
    for node in out.graph.node:
        nodes.append(node)
        nodes.extend(after.get(node.name, []))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    log.info("outlier split: %d tensors, %d channels", len(chosen), sum(len(i) for i in chosen.values()))
    return out
