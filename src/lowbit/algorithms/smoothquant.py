"""SmoothQuant: migrate activation outliers into the weights before calibration.

Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models" (ICML 2023). For a linear layer y = x W (W: (K, N)), a per-input-channel factor
s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) rewrites it as y = (x / s) (diag(s) W): the function is
unchanged, but the activation's outlier channels shrink and one per-tensor activation scale fits
it far better, while the weights (quantized per output channel) absorb the growth.

In a post-LN encoder (BERT) the layer norm's output also feeds the residual stream, so 1/s cannot
be folded into the norm's gamma; lowbit inserts one `Mul(x, 1/s)` per smoothed tensor (shared by
the layers reading it, e.g. Q, K and V) -- an elementwise pass that costs a few microseconds next to
the MatMuls. The knob that matters: `alpha`, the migration strength (0: nothing moves; 1: all the
activation range moves into the weights).

>>> config = QuantConfig(algorithms=(SmoothQuant(alpha=0.5),))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.algorithms import _layer_data as ld
from lowbit.errors import ConfigError
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.names import Names
from lowbit.onnx.session import run_batch, session
from lowbit.plan.algorithm import Algorithm, AlgorithmContext, register_algorithm
from lowbit.plan.quant_plan import QuantPlan
from lowbit.transformers.patterns import find_patterns

log = logging.getLogger(__name__)

# factors are clamped to this range: a dead channel (max 0) must not give s = 0 or inf
S_MIN, S_MAX = 1e-2, 1e2


@register_algorithm("smoothquant")
@dataclass(frozen=True)
class SmoothQuant(Algorithm):
    """SmoothQuant (Xiao et al. 2022). Knob: `alpha` (migration strength, 0.5 in the paper for
    BERT-sized models). `roles` limits it to linear layers of those roles (lowbit.transformers
    patterns: qkv, attn_out, ffn_up, ffn_down, other); empty = every linear layer."""

    alpha: float = 0.5
    roles: tuple[str, ...] = field(default=())

    stage = "float"

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"SmoothQuant alpha must lie in [0, 1]; got {self.alpha}")
        object.__setattr__(self, "roles", tuple(self.roles))

    def apply(self, model: onnx.ModelProto, plan: QuantPlan | None,
              ctx: AlgorithmContext) -> tuple[onnx.ModelProto, QuantPlan | None]:
        if ctx.calib is None:
            raise ConfigError("SmoothQuant needs calibration data to measure activation ranges.")
        groups = smoothable_inputs(model, self.roles)
        if not groups:
            return model, plan
        amax = channel_absmax(model, list(groups), ctx.calib)
        return smooth(model, groups, amax, self.alpha), plan


def smoothable_inputs(model: onnx.ModelProto, roles: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """{input tensor: [linear nodes reading it]} for the linear layers (MatMul with a constant
    (K, N) weight) to smooth; a tensor is smoothed only if every linear reader can be rescaled."""
    g = GraphIndex(model)
    p = find_patterns(model)
    groups: dict[str, list[str]] = {}
    for name in p.linear:
        node = g.nodes[name]
        if node.op_type != "MatMul" or (roles and p.linear_role[name] not in roles):
            continue
        if len(g.consumers.get(node.input[1], [])) != 1:
            continue  # shared weight: rescaling it would change its other user
        groups.setdefault(node.input[0], []).append(name)
    return groups


def channel_absmax(model: onnx.ModelProto, tensors: list[str], data) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of each tensor over the calibration data, streaming."""
    out: dict[str, np.ndarray] = {}
    # batch by batch, unmerged: text batches differ in sequence length
    sess = session(ld.prefix_model(model, tensors), optimize=False, arena=False)
    for batch in data:
        for name, x in zip(tensors, run_batch(sess, batch, tensors)):
            m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
            out[name] = m if name not in out else np.maximum(out[name], m)
    return out


def smoothing_factors(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|x_j|^alpha / max|W_j|^(1-alpha) (Xiao et al. 2022, eq. 4), clamped; (K,) float32."""
    x = np.maximum(x_absmax.astype(np.float64), 1e-5)
    w = np.maximum(w_absmax.astype(np.float64), 1e-5)
    return np.clip(x**alpha / w ** (1.0 - alpha), S_MIN, S_MAX).astype(np.float32)


def smooth(model: onnx.ModelProto, groups: dict[str, list[str]], amax: dict[str, np.ndarray],
           alpha: float) -> onnx.ModelProto:
    """A copy of `model` with x -> Mul(x, 1/s) before each group and the weights' rows times s."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = GraphIndex(out)
    inits = {t.name: t for t in out.graph.initializer}
    new_nodes: dict[str, list[onnx.NodeProto]] = {}
    made = Names(out)
    for tensor, names in groups.items():
        ws = [numpy_helper.to_array(inits[g.nodes[n].input[1]]).astype(np.float32) for n in names]
        w_absmax = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)  # (K,): row j meets channel j
        s = smoothing_factors(amax[tensor], w_absmax, alpha)
        for n, w in zip(names, ws):
            w_name = g.nodes[n].input[1]
            inits[w_name].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), w_name))
        p = made.fresh_prefix(tensor, ("_smooth", "_smooth_inv", "_SmoothQuant"))
        smoothed, inv = f"{p}_smooth", f"{p}_smooth_inv"
        out.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        mul = helper.make_node("Mul", [tensor, inv], [smoothed], name=f"{p}_SmoothQuant")
        producer = g.producer.get(tensor)
        new_nodes.setdefault(producer.name if producer is not None else "", []).append(mul)
        for n in names:
            g.nodes[n].input[0] = smoothed
    nodes = list(new_nodes.get("", []))
    for node in out.graph.node:
        nodes.append(node)
        nodes.extend(new_nodes.get(node.name, []))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    log.info("smoothquant: %d tensors smoothed (alpha %.2f)", len(groups), alpha)
    return out


def outlier_ratio(x: np.ndarray) -> float:
    """max over channels of max|x_c| divided by the median channel's: how much one per-tensor scale
    is stretched by the outlier channels (1 = no outliers)."""
    m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
    return float(m.max() / max(np.median(m), 1e-12))
