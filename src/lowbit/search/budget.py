"""The accuracy budget of `lowbit.quantize(..., max_drop= / min_metric=)`: rank layers, search
precisions on one half of the held-out data, confirm the result on the other half."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lowbit.config import QuantConfig
from lowbit.data import FeedSource, as_feeds
from lowbit.errors import ConfigError
from lowbit.metrics import METRICS
from lowbit.metrics.infer import choose_metrics
from lowbit.metrics.spec import parse_metric
from lowbit.onnx.session import run_batch, session
from lowbit.plan.quant_plan import QuantPlan
from lowbit.progress import Progress, null_progress
from lowbit.search.evaluate import PlanEvaluator
from lowbit.search.held import HoldCap, batch_nbytes
from lowbit.search.mixed import four_bit_weight_choices, linear_block_choices
from lowbit.search.float_layers import restore_float_layers
from lowbit.search.precision import promotion_order, search_precisions
from lowbit.search.recovered import Recovery, recover_mixes
from lowbit.search.sensitivity import analyze_layers
from lowbit.target import layer_costs  # called through the module: tests replace the measurement
from lowbit.transformers.pipeline import block_choices
from lowbit.verify.outputs import OutputStore

log = logging.getLogger(__name__)


# a budget of fewer samples than this cannot be told from sampling noise: the count at the budget
# varies by about its square root, so below 10 the search fits the samples it has
MIN_SAMPLES_IN_BUDGET = 10


def too_few_samples(metric: Any, max_drop: float | None, n_search: int) -> str | None:
    """A warning where `max_drop` of a metric that counts samples (top-1 agreement) is too few of the
    `n_search` search samples to measure; None otherwise."""
    counts = getattr(METRICS.create(metric) if isinstance(metric, str) else metric, "counts_samples", False)
    if max_drop is None or not counts or max_drop * n_search >= MIN_SAMPLES_IN_BUDGET:
        return None
    need = 2 * int(np.ceil(MIN_SAMPLES_IN_BUDGET / max_drop))
    return (f"the budget ({100 * max_drop:g}%) is {max_drop * n_search:.1f} of the {n_search} search samples: too few "
            f"to tell from noise, so the chosen mix fits these samples and may exceed the budget on new data "
            f"(MobileNetV2 at 1% on 150 search crops: 0.993 there, 0.975 on 600 new crops). Give at least "
            f"{need} evaluation samples (half search, half confirm).")


def split_halves(feeds: FeedSource, cap: HoldCap | None = None) -> tuple[list, list]:
    """Deterministic halves of an evaluation set: one to search on, one to confirm on. Streamed:
    where `cap` (default `HoldCap()`) is reached, the rest of the data is left unread."""
    cap = cap or HoldCap()
    halves: tuple[list, list] = ([], [])
    for i, batch in enumerate(feeds):
        if not cap.room():
            break
        halves[i % 2].append(batch)
        cap.add(batch.size, batch_nbytes(batch))
    return halves


@dataclass(frozen=True)
class Budget:
    """An accuracy budget: `metric` (a Metric, a registry name or a callable, higher is better) at
    least `min_metric`, or at most `max_drop` below the reference model's score; the search spends
    at most `max_evals` evaluations."""

    metric: Any
    max_drop: float | None = None
    min_metric: float | None = None
    max_evals: int = 40


def budget_search(model: onnx.ModelProto, plan: QuantPlan, cfg: QuantConfig, feeds: FeedSource, budget: Budget, *,
                  reference: onnx.ModelProto, float_weights: onnx.ModelProto | None,
                  checkpoint: str | Path | None = None, progress: Progress = null_progress,
                  recover: Recovery | None = None, recover_tries: int = 3
                  ) -> tuple[QuantPlan, dict, onnx.ModelProto]:
    """(plan, search record, the float model the plan applies to) for the calibrated `plan` of the
    float `model`, searched on half of the held-out `feeds` and confirmed on the other half.
    `reference`: the user's FP32 model; `float_weights`: the float model before plan-stage
    algorithms, whose weights the layers kept in float run with. `recover(float model, plan)`:
    where given, mixes with fewer float layers than the search's are recovered and judged
    (`lowbit.search.recovered`, at most `recover_tries` recoveries)."""
    metric, max_drop, min_metric, max_evals = budget.metric, budget.max_drop, budget.min_metric, budget.max_evals
    cap = HoldCap()
    search_half, holdout_half = split_halves(feeds, cap)
    if cap.hit:
        log.warning(cap.message(f"--max-drop / --min-metric evaluation data ({feeds.description})"))
    evaluator = PlanEvaluator(model, search_half, metric, checkpoint, reference=reference,
                              float_weights=float_weights)
    floor = min_metric if min_metric is not None else evaluator.reference_score - max_drop
    costs = None
    if cfg.objective == "latency":
        costs = layer_costs.measure_layer_costs(model, progress=progress)
    ranking = analyze_layers(model, plan, evaluator, ways=("all_but",), progress=progress)
    choices = None
    if cfg.transformer is True:  # 4-bit MatMul weights and a block-quantized embedding table
        choices = block_choices(model, plan)
    else:  # 4-bit Conv / Gemm weights on the int8 kernels; 8-bit blocks for linear layers
        choices = four_bit_weight_choices(model, plan)
        for name, options in linear_block_choices(model, plan).items():
            choices.setdefault(name, {}).update(options)
    confirm = PlanEvaluator(model, holdout_half, metric, reference=reference, float_weights=float_weights)
    # CNN layers kept in float are then tried on INT8-stored weights (transformers: 4-bit blocks);
    # a choice that fails the budget on the held-out half backs off its last refinements
    result = search_precisions(model, plan, evaluator, floor, ranking, costs, cfg.objective, max_evals,
                               progress, choices, weight_only=cfg.transformer is not True,
                               holds_elsewhere=lambda p: confirm.score(p).metric >= floor)
    held = confirm.score(result.plan)
    for name, why in result.reasons.items():
        result.plan.nodes[name].reason = why
    d = result.to_dict()
    d["metric"] = metric if isinstance(metric, str) else getattr(metric, "registry_name", "custom")
    d["reference_metric"] = evaluator.reference_score
    d["ranking_evaluations"] = len(ranking)  # one per layer, then at most max_evals in the search
    d["computed_evaluations"] = evaluator.evaluations  # the rest came from the checkpoint
    caps = [r for r in (cap.record(), evaluator.held, confirm.held) if r is not None]
    if caps:  # the first cap reached, and what the search and its check really saw
        d["held_data"] = {**caps[0], "search_samples": int(len(evaluator.reference)),
                          "holdout_samples": int(len(confirm.reference))}
    few = too_few_samples(metric, max_drop, len(evaluator.reference))
    if few:
        log.warning(few)
        d["warning"] = few
    d["holdout"] = {"metric": held.metric, "sqnr_db": held.sqnr_db, "samples": int(len(confirm.reference)),
                    "meets_floor": held.metric >= floor, "used_to_back_off": True}
    shipped = result.plan
    float_model = restore_float_layers(model, float_weights, shipped) if float_weights is not None else model
    if recover is not None:
        found, d["recovered_mixes"] = recover_mixes(
            model, plan, result.chosen.promoted, promotion_order(ranking, plan), float_weights, evaluator, confirm,
            floor, recover, choices, recover_tries, progress)
        if found is not None:
            float_model, shipped = found
            _describe_recovered(d)
    return shipped, d, float_model


def _describe_recovered(d: dict) -> None:
    """The search record of a budget met by a recovered mix: its scores on both halves replace the
    search's chosen mix's (which stays in the record as `before_recovery`)."""
    rec_before = {"met_budget": d["met_budget"]}
    rec = d["recovered_mixes"]
    trial = next(t for t in rec["tries"] if t["float_layers"] == rec["shipped_float_layers"])
    rec["before_recovery"] = {**rec_before, "chosen": d["chosen"], "holdout": d["holdout"]}
    d["chosen"] = {"promoted": rec.pop("shipped_promoted"), "metric": trial["metric"], "sqnr_db": trial["sqnr_db"],
                   "size_bytes": trial["size_bytes"], "latency_ms": None}
    d["holdout"] = {**d["holdout"], "metric": trial["holdout_metric"], "sqnr_db": trial["holdout_sqnr_db"],
                    "meets_floor": True}
    d["met_budget"] = True


def budget_metric(metric: Any, reference: onnx.ModelProto, eval_data: Any, inputs, preprocess: Any,
                  samples: int = 32):
    """The budget's metric as a MetricChoice: the user's, else the one the reference's outputs on the
    first `samples` evaluation samples show (lowbit.metrics.infer), so budget and report agree. The
    search scores the model's first output."""
    sess = session(reference.SerializeToString(), threads=1)
    names = [o.name for o in sess.get_outputs()]
    if metric is not None:
        choice = parse_metric(metric)
        if choice.outputs and choice.outputs[0] != names[0]:
            raise ConfigError(f"the budget search scores the model's first output ({names[0]}); metric "
                              f"{choice.name} names {choice.outputs[0]}.")
        return choice

    store = OutputStore(names)
    for i, batch in enumerate(as_feeds(eval_data, inputs, preprocess=preprocess, limit=samples)):
        store.add(run_batch(sess, batch), batch.size)
    outs = store.stacked()
    first = {names[0]: outs[names[0]]} if names[0] in outs else {}
    return choose_metrics(first)[0] if first else parse_metric("sqnr")


def budget_outcome(search: dict, label: str) -> dict:
    """Whether the budget held: on the search half and, what counts, on the held-out half."""
    held = search.get("holdout") or {}
    return {"label": label, "metric": search.get("metric"), "floor": search.get("floor"),
            "search_metric": (search.get("chosen") or {}).get("metric"), "holdout_metric": held.get("metric"),
            "holdout_samples": held.get("samples"),
            "met": bool(search.get("met_budget")) and bool(held.get("meets_floor"))}
