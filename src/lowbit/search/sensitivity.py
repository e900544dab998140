"""Per-layer sensitivity, measured two ways, with per-layer statistics and the likely cause of
each problem named in plain words, and the fix lowbit would apply."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from lowbit.calibration.collect import CalibrationStats
from lowbit.core.granularity import PerTensor
from lowbit.onnx.graph import GraphIndex
from lowbit.plan.quant_plan import QuantPlan
from lowbit.progress import Progress, null_progress
from lowbit.search.evaluate import PlanEvaluator
from lowbit.search.mixed import layer_nodes, mixed_plan

OUTLIER_RATIO = 4.0      # max |x| over the 99.99th percentile beyond which outliers set the range
SPREAD_RATIO = 100.0     # per-channel weight range spread worth equalizing


@dataclass
class LayerSensitivity:
    name: str
    op: str
    only_this_metric: float          # only this layer quantized
    only_this_sqnr_db: float
    all_but_this_metric: float       # everything quantized except this layer
    all_but_this_sqnr_db: float
    weight_range: tuple[float, float] | None = None
    channel_spread: float | None = None
    activation_range: tuple[float, float] | None = None
    outlier_ratio: float | None = None
    output_sqnr_db: float | None = None   # model output SQNR with only this layer quantized
    causes: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _spread(plan: QuantPlan, w_name: str | None) -> float | None:
    t = plan.tensors.get(w_name) if w_name else None
    if t is None or isinstance(t.qparams.granularity, PerTensor):
        return None
    s = np.asarray(t.qparams.scale, np.float64)
    s = s[s > 1e-10]
    return float(s.max() / s.min()) if s.size else None


def _causes(s: LayerSensitivity, plan: QuantPlan, g: GraphIndex, per_tensor_weights: bool) -> None:
    node = g.nodes[s.name]
    if s.outlier_ratio is not None and s.outlier_ratio > OUTLIER_RATIO:
        s.causes.append(f"activation outliers: 0.01% of the input values set the range (the maximum is "
                        f"{s.outlier_ratio:.0f}x the 99.99th percentile), so most values share a few grid steps")
        s.fixes.append("clip the range with percentile or MSE calibration (preset int8 does); SmoothQuant for MatMul inputs")
    if s.channel_spread is not None and s.channel_spread > SPREAD_RATIO:
        s.causes.append(f"per-channel weight ranges differ {s.channel_spread:.0f}x: equalization should help")
        s.fixes.append("cross-layer equalization (preset int8 does where the activation allows it)")
    if node.op_type == "Conv" and int(g.attr(node, "group", 1)) > 1 and per_tensor_weights:
        s.causes.append("depthwise conv with per-tensor scales: one channel's range sets every channel's grid")
        s.fixes.append("per-channel weight scales (lowbit's default)")
    if s.output_sqnr_db is not None and s.output_sqnr_db < 20 and not s.causes:
        s.causes.append(f"coarse grid: quantizing this layer alone leaves the model output at "
                        f"{s.output_sqnr_db:.1f} dB SQNR")
        s.fixes.append("keep this layer in higher precision (the precision search does)")


def analyze_layers(model: onnx.ModelProto, plan: QuantPlan, evaluator: PlanEvaluator,
                   input_stats: CalibrationStats | None = None, ways: tuple[str, ...] = ("only", "all_but"),
                   progress: Progress = null_progress) -> list[LayerSensitivity]:
    """Sensitivity of every layer of an INT8 `plan`, most sensitive first: 'only' quantizes just
    that layer, 'all_but' everything except it (one evaluation per layer and way)."""
    g = GraphIndex(model)
    layers = layer_nodes(plan)
    out: list[LayerSensitivity] = []
    per_tensor = any(isinstance(t.qparams.granularity, PerTensor) for t in plan.tensors.values() if t.role == "weight")
    for i, name in enumerate(layers):
        only = (evaluator.score(mixed_plan(model, plan, {n: "fp32" for n in layers if n != name}, g,
                                           own_outputs=False)) if "only" in ways else None)
        but = evaluator.score(mixed_plan(model, plan, {name: "fp32"}, g)) if "all_but" in ways else None
        only = only or but
        but = but or only
        node = g.nodes[name]
        w = node.input[1] if len(node.input) > 1 and node.input[1] in plan.tensors else None
        x = node.input[0]
        s = LayerSensitivity(name, node.op_type, only.metric, only.sqnr_db, but.metric, but.sqnr_db)
        if w:
            s.weight_range = plan.tensors[w].calibrated_range
            s.channel_spread = _spread(plan, w)
        if x in plan.tensors:
            s.activation_range = plan.tensors[x].calibrated_range
        if input_stats is not None and x in input_stats.observers:
            obs = input_stats.observers[x]
            lo, hi = obs.observed_range()
            clo, chi = obs.range()
            amax, camax = max(abs(lo), abs(hi)), max(abs(clo), abs(chi), 1e-12)
            s.outlier_ratio = float(amax / camax)
        s.output_sqnr_db = only.sqnr_db
        _causes(s, plan, g, per_tensor)
        out.append(s)
        progress("analyze", i + 1, len(layers))
    # most sensitive first: what the layer alone breaks, then what keeping it in float recovers
    out.sort(key=lambda s: (s.only_this_metric, s.only_this_sqnr_db, -s.all_but_this_metric))
    return out


def worst_histograms(stats, plan: QuantPlan, worst, model) -> list[dict]:
    """Input-activation histograms of the worst layers, with the plan's clipping range."""
    g = GraphIndex(model)
    out = []
    for s in worst:
        x = g.nodes[s.name].input[0]
        obs = stats.observers.get(x)
        t = plan.tensors.get(x)
        if obs is None or t is None or not hasattr(obs, "counts"):
            continue
        counts = np.asarray(obs.counts)
        edges = np.linspace(-obs.radius, obs.radius, len(counts) + 1)
        used = np.nonzero(counts)[0]
        if used.size == 0:
            continue
        a, b = used[0], used[-1] + 1
        factor = max(1, (b - a) // 120)  # ~120 bars are enough to see the tail
        b = a + ((b - a + factor - 1) // factor) * factor
        c = np.pad(counts, (0, max(0, b - len(counts))))[a:b].reshape(-1, factor).sum(axis=1)
        out.append({"layer": s.name, "tensor": x, "counts": c.tolist(),
                    "edges": np.linspace(edges[a], edges[a] + (b - a) * (edges[1] - edges[0]), len(c) + 1).tolist(),
                    "clip": list(t.calibrated_range or ()),
                    "observed": list(obs.observed_range())})
    return out
