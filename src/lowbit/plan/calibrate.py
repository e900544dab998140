"""The plan stage of a static INT8 run: float algorithms, the recipe's selection, streaming
calibration, the plan (clipping and region choices measured on the calibration data), plan
algorithms. It returns what later stages need, the calibration statistics included.

The recipe follows from the resolved config (`lowbit.presets.resolve_transformer`), chosen once:
- 'cnn' (transformer=False): `selection.select`, layer costs, Concat splits, percentile clipping
  chosen per model, elementwise arithmetic in float where clearly closer;
- 'transformer' (True): `transformers.patterns.transformer_selection`, one plan, the embedding table
  in blocks;
- 'mixed': the transformer recipe inside the blocks, the CNN recipe elsewhere (`plan.recipes`), the
  first layers in float where clearly closer (`search.float_prefix`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from lowbit.calibration.collect import CalibrationStats, collect_stats
from lowbit.config import QuantConfig
from lowbit.data import FeedSource
from lowbit.load.prepare import fingerprint
from lowbit.plan.algorithm import AlgorithmContext
from lowbit.plan.clipping import choose_clipping, simulated_sqnr
from lowbit.plan.planner import build_plan
from lowbit.plan.quant_plan import QuantPlan
from lowbit.plan.recipes import block_inputs, mixed_selection, with_mse_ranges
from lowbit.plan.regions import ELEMENTWISE_MARGIN_DB, choose_elementwise, concats_to_split, elementwise_nodes
from lowbit.plan.selection import Selection, select
from lowbit.progress import Progress, null_progress
from lowbit.search.float_choice import choose_float_layers
from lowbit.search.float_prefix import choose_float_prefix
from lowbit.target import layer_costs  # called through the module: tests replace the measurement
from lowbit.transformers.patterns import transformer_selection
from lowbit.transformers.pipeline import embedding_in_blocks


@dataclass
class Calibrated:
    """What the plan stage hands on."""

    model: onnx.ModelProto  # the float model the plan applies to (after the algorithms)
    plan: QuantPlan
    before_fit: onnx.ModelProto  # before the plan-stage algorithms fitted weights to their grids
    stats: CalibrationStats  # the observers of every tensor the selection observed


def recipe(config: QuantConfig) -> str:
    """'cnn', 'transformer' or 'mixed' for a resolved config (transformer not 'auto')."""
    if config.transformer == "auto":
        raise ValueError("resolve transformer='auto' first (lowbit.presets.resolve_transformer)")
    return "mixed" if config.transformer == "mixed" else "transformer" if config.transformer else "cnn"


class _Clock:
    """Seconds per step into `timings` ('plan:<step>')."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings, self.t = timings, time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.timings[step] = self.timings.get(step, 0.0) + now - self.t
        self.t = now


def calibrate(model: onnx.ModelProto, config: QuantConfig, calib: FeedSource, progress: Progress = null_progress,
              timings: dict[str, float] | None = None) -> Calibrated:
    """Calibrate a static INT8 plan for the prepared float `model` under a resolved `config`.
    `model` is taken over: a float algorithm's copy replaces it, so a caller that hands over its
    only reference holds one float model at a time. `timings` gets seconds per step."""
    clock = _Clock({} if timings is None else timings)
    kind = recipe(config)
    ctx = AlgorithmContext(calib, config, progress, config.seed, clock.timings)
    model, _ = _run_algorithms("float", model, None, config, ctx, clock)
    costs = None
    if config.objective == "latency" and kind != "transformer":
        costs = layer_costs.measure_layer_costs(model, threads=1, progress=progress)
        clock.lap("plan:layer_costs")

    def choose(keep=None) -> Selection:
        if kind == "mixed":
            return mixed_selection(model, config, costs, keep)
        return select(model, config, costs, keep=keep)

    selection = transformer_selection(model, config.keep_float) if kind == "transformer" else choose()
    method = config.activations.calibration
    stats = collect_stats(model, selection.to_observe, calib, lambda name: method, progress)
    clock.lap("plan:calibrate")
    if kind == "transformer":
        plan = build_plan(model, selection, stats, config)
    else:
        progress("clipping", 0, None)
        plan, selection = _measured_plan(model, config, calib, stats, selection, choose, kind == "mixed", clock)
    clock.lap("plan:clipping")
    if selection.layer_costs:  # the timings behind the layers kept in float for speed
        plan.decisions.layer_costs = selection.layer_costs
    before_fit = model
    model, plan = _run_algorithms("plan", model, plan, config, ctx, clock)
    if kind == "transformer":
        plan = embedding_in_blocks(model, plan)
    # the plan describes the float model the algorithms produced: that is what it re-applies to
    plan.model_fingerprint = fingerprint(model)
    return Calibrated(model, plan, before_fit, stats)


def _run_algorithms(stage: str, model: onnx.ModelProto, plan: QuantPlan | None, config: QuantConfig,
                    ctx: AlgorithmContext, clock: _Clock) -> tuple[onnx.ModelProto, QuantPlan | None]:
    for alg in config.algorithms:
        if alg.stage == stage:
            ctx.progress(alg.registry_name, 0, None)  # announced: some run minutes without a count
            model, out = alg.apply(model, plan, ctx)
            plan = out if stage == "plan" else plan
            clock.lap(f"plan:{alg.registry_name}")
    return model, plan


def _prefix_with_float_elementwise(model: onnx.ModelProto, plan: QuantPlan, prefix: dict, alt: QuantPlan,
                                    choice: dict, clipping: dict, calib: FeedSource) -> tuple[QuantPlan, dict]:
    """The two choices interact: in PP-OCRv3's recognizer neither float elementwise arithmetic (6.79
    -> 6.81 dB) nor float first layers (-> 7.1 dB) helped alone, each hidden by the other's error;
    together 21 dB, strings identical to FP32 0.09 -> 0.74. So the float prefix is also chosen on the
    float-elementwise plan, which replaces the result when clearly closer (the same margin)."""
    best = max(prefix["sqnr_db"].values()) if prefix else choice["sqnr_int8_db"]
    alt_plan, alt_prefix = choose_float_prefix(model, alt, calib, known_db=choice["sqnr_float_db"])
    alt_best = max(alt_prefix["sqnr_db"].values()) if alt_prefix else choice["sqnr_float_db"]
    if alt_best <= best + ELEMENTWISE_MARGIN_DB:
        return plan, prefix
    alt_plan.decisions.elementwise_choice = {**choice, "float": True, "with_float_prefix_db": alt_best,
                                             "int8_with_float_prefix_db": best}
    alt_plan.decisions.activation_clipping = clipping
    return alt_plan, alt_prefix


def _measured_plan(model: onnx.ModelProto, config: QuantConfig, calib: FeedSource, stats: CalibrationStats,
                   selection: Selection, choose: Callable[..., Selection], mixed: bool, clock: _Clock
                   ) -> tuple[QuantPlan, Selection]:
    """The CNN recipe's plan: Concats of very different ranges in float (`plan.regions`), the
    clipping level whose plan is closest to FP32 at the output (`plan.clipping`), elementwise
    arithmetic in float where that is clearly closer, and for a mixed model the first layers in
    float where clearly closer (`search.float_prefix`). Each choice is recorded in the plan."""
    split = concats_to_split(model, selection, stats, config)
    if split:
        selection = choose(split)

    def plan_for(sel: Selection, cfg: QuantConfig) -> QuantPlan:  # a mixed model's block inputs on MSE ranges
        plan = build_plan(model, sel, stats, cfg)
        return with_mse_ranges(plan, stats, cfg, block_inputs(model, sel)) if mixed else plan

    plan, clipped, clipping = choose_clipping(model, lambda c: plan_for(selection, c), stats, config, calib)
    elementwise = elementwise_nodes(selection) if clipping else {}
    alt, choice = None, None
    if elementwise:
        alt = plan_for(choose({**split, **elementwise}), clipped)
        sqnr = simulated_sqnr(model, {"float": alt}, calib)["float"]
        choice = choose_elementwise(clipping["levels"][str(clipping["chosen"])], sqnr)
        if choice["float"]:
            plan = alt
        plan.decisions.elementwise_choice = choice
    if clipping:
        plan.decisions.activation_clipping = clipping
    if mixed:
        known = (choice["sqnr_float_db"] if choice["float"] else choice["sqnr_int8_db"]) if choice else \
            (clipping["levels"][str(clipping["chosen"])] if clipping else None)
        plan, prefix = choose_float_prefix(model, plan, calib, known_db=known)
        if alt is not None and not choice["float"]:
            plan, prefix = _prefix_with_float_elementwise(model, plan, prefix, alt, choice, clipping, calib)
        if prefix:
            plan.decisions.float_prefix = prefix
        clock.lap("plan:clipping")
        plan, choice = choose_float_layers(model, plan, calib)  # measured error: lowbit.search.float_choice
        if choice:
            plan.decisions.float_choice = choice
        clock.lap("plan:float_choice")
    return plan, selection
