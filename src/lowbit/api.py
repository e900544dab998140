"""The Python API: one verb per intent. Composes the stages; holds no maths."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lowbit.algorithms import AlgorithmContext
from lowbit.analysis.float_layers import restore_float_layers
from lowbit.clipping import choose_clipping, simulated_sqnr
from lowbit.config import QuantConfig, as_config, resolve_transformer
from lowbit.regions import choose_elementwise, concats_to_split, elementwise_nodes
from lowbit.data import FeedSource, as_feeds
from lowbit.data.arrays import take_rows
from lowbit.emit import emit_qdq
from lowbit.energy import SOURCE as ENERGY_SOURCE
from lowbit.energy import ASSUMPTIONS as ENERGY_ASSUMPTIONS
from lowbit.energy import estimate as estimate_energy
from lowbit.energy import priced_precisions
from lowbit.emit.dynamic import emit_dynamic
from lowbit.emit.fp16 import emit_fp16, emit_fp16_weights
from lowbit.emit.size_check import TINY_MODEL, check_smaller, sizes
from lowbit.emit.shared_constants import share_identical_initializers
from lowbit.emit.subgraphs import describe, store_subgraph_weights
from lowbit.emit.weight_only import WEIGHT_ONLY_MAX_BYTES, weight_only_plan
from lowbit.hardware import target_traits
from lowbit.errors import ConfigError, DataError, ModelError
from lowbit.io import atomic_write_bytes, check_outputs
from lowbit.load import LoadedModel, load_model
from lowbit.observe import collect_stats
from lowbit.peak_memory import peak_rss_mb, reset_peak_rss
from lowbit.plan import QuantPlan
from lowbit.plan_fit import check_plan_fits, plan_to_apply
from lowbit.planner import build_plan
from lowbit.prepare import PreparedModel, fingerprint, prepare
from lowbit.progress import Progress, accepts_progress, null_progress
from lowbit.report import Report
from lowbit.selection import select
from lowbit.stateful import check_data_options, model_feeds
from lowbit.speed_prediction import predict_speed  # noqa: F401  (lowbit.api.predict_speed)
from lowbit.verify import check_parity, compare_models, kernel_check, measure_latency

log = logging.getLogger(__name__)


@dataclass
class QuantResult:
    """What quantize() gives back: the quantized model, its plan, and the report that proves it."""

    model: onnx.ModelProto
    plan: QuantPlan
    report: Report
    output_path: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # the prepared float model the plan applies to (for simulation and later comparisons)
    float_model: onnx.ModelProto | None = field(default=None, repr=False)


@dataclass(frozen=True)
class VerifyOptions:
    """How much proof to gather. Latency takes the most time: `threads=()` skips it."""

    threads: tuple[int, ...] = (1, 2)
    latency_runs: int = 30
    parity_batches: int = 16
    eval_limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("latency_runs", "parity_batches") + (("eval_limit",) if self.eval_limit is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"VerifyOptions.{name} must be a whole number of at least 1; got {value!r}.")
        if any(not isinstance(t, int) or t < 1 for t in self.threads):
            raise ConfigError(f"VerifyOptions.threads must be thread counts of at least 1 (or () to skip latency); "
                              f"got {self.threads!r}.")


def _stage(timings: dict[str, float], name: str, t0: float) -> float:
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - t0
    return now


def make_plan(prepared: PreparedModel, config: QuantConfig, calib: FeedSource,
              progress: Progress = null_progress) -> tuple[onnx.ModelProto, QuantPlan]:
    """Calibrate a static INT8 plan: float algorithms, select nodes, observe their tensors, choose
    qparams, then plan algorithms. Returns the (possibly re-weighted) float model and its plan."""
    model, plan, _ = calibrate_plan(prepared, config, calib, progress)
    return model, plan


def calibrate_plan(prepared: PreparedModel, config: QuantConfig, calib: FeedSource,
                   progress: Progress = null_progress, timings: dict[str, float] | None = None
                   ) -> tuple[onnx.ModelProto, QuantPlan, onnx.ModelProto]:
    """`make_plan`, also returning the float model before the plan-stage algorithms fitted layers to
    their INT8 grids (what a layer kept in float should run with). `timings` gets seconds per step
    ('plan:<step>': each algorithm, layer costs, calibration, clipping)."""
    timings = {} if timings is None else timings
    t = time.perf_counter()
    config = resolve_transformer(config, prepared.proto)
    ctx = AlgorithmContext(calib, config, progress, config.seed, timings)
    model = prepared.proto
    # not kept past this point: where the caller handed over its only reference (quantize does),
    # the unfitted model is freed as soon as a float algorithm has made its own
    del prepared
    for alg in config.algorithms:
        if alg.stage == "float":
            progress(alg.registry_name, 0, None)  # announced: some run minutes without a count
            model, _ = alg.apply(model, None, ctx)
            t = _stage(timings, f"plan:{alg.registry_name}", t)
    costs = None
    mixed = config.transformer == "mixed"  # each region its recipe (lowbit.recipes)
    if config.objective == "latency" and (mixed or not config.transformer):
        from lowbit.layer_costs import measure_layer_costs

        costs = measure_layer_costs(model, threads=1, progress=progress)
        t = _stage(timings, "plan:layer_costs", t)
    if mixed:
        from lowbit.recipes import block_inputs, mixed_selection, with_mse_ranges

        def choose(keep=None):
            return mixed_selection(model, config, costs, keep)
    else:
        def choose(keep=None):
            return select(model, config, costs, keep=keep)
    if config.transformer and not mixed:
        from lowbit.transformers.patterns import transformer_selection

        selection = transformer_selection(model, config.keep_float)
    else:
        selection = choose()
    method = config.activations.calibration
    stats = collect_stats(model, selection.to_observe, calib, lambda name: method, progress)
    t = _stage(timings, "plan:calibrate", t)
    split: dict[str, str] = {}
    if mixed or not config.transformer:  # Concats of very different ranges stay float (lowbit.regions)
        split = concats_to_split(model, selection, stats, config)
        if split:
            selection = choose(split)

    def plan_for(sel, cfg):  # block linear inputs of a mixed model on MSE ranges (transformer recipe)
        plan = build_plan(model, sel, stats, cfg)
        return with_mse_ranges(plan, stats, cfg, block_inputs(model, sel)) if mixed else plan
    if config.transformer and not mixed:
        plan = build_plan(model, selection, stats, config)
    else:  # the clipping level whose plan is closest to FP32 at the output (lowbit.clipping)
        progress("clipping", 0, None)
        plan, clipped, clipping = choose_clipping(model, lambda c: plan_for(selection, c), stats, config, calib)
        elementwise = elementwise_nodes(selection) if clipping else {}
        if elementwise:  # elementwise arithmetic in float where that is clearly closer (lowbit.regions)
            alt = plan_for(choose({**split, **elementwise}), clipped)
            sqnr = simulated_sqnr(model, {"float": alt}, calib)["float"]
            choice = choose_elementwise(clipping["levels"][str(clipping["chosen"])], sqnr)
            if choice["float"]:
                plan = alt
            plan.config["elementwise_choice"] = choice
        if clipping:
            plan.config["activation_clipping"] = clipping
        if mixed:  # the first layers in float where clearly closer to FP32 (lowbit.float_prefix)
            from lowbit.float_prefix import choose_float_prefix

            plan, prefix = choose_float_prefix(model, plan, calib)
            if prefix:
                plan.config["float_prefix"] = prefix
            from lowbit.float_choice import choose_float_layers  # measured error: lowbit.float_choice

            t = _stage(timings, "plan:clipping", t)
            plan, choice = choose_float_layers(model, plan, calib)
            if choice:
                plan.config["float_choice"] = choice
            t = _stage(timings, "plan:float_choice", t)
    t = _stage(timings, "plan:clipping", t)
    if selection.layer_costs:  # the timings behind the layers kept in float for speed
        from lowbit.latency_choice import PLAN_KEY

        plan.config[PLAN_KEY] = selection.layer_costs
    before_fit = model
    for alg in config.algorithms:
        if alg.stage == "plan":
            progress(alg.registry_name, 0, None)
            model, plan = alg.apply(model, plan, ctx)
            t = _stage(timings, f"plan:{alg.registry_name}", t)
    if config.transformer and not mixed:
        from lowbit.transformers.pipeline import embedding_in_blocks

        plan = embedding_in_blocks(model, plan)
    # the plan describes the float model the algorithms produced: that is what it re-applies to
    plan.model_fingerprint = fingerprint(model)
    return model, plan, before_fit


@accepts_progress
def quantize(
    model: Any,
    config: QuantConfig | str | None = "int8",
    calib_data: Any = None,
    *,
    output: str | Path | None = None,
    eval_data: Any = None,
    labels: Any = None,
    example_inputs: Any = None,
    preprocess: Any = None,
    plan: QuantPlan | str | Path | None = None,
    calib_limit: int | None = None,
    max_drop: float | None = None,
    min_metric: float | None = None,
    metric: Any = None,
    search_evals: int = 40,
    checkpoint: str | Path | None = None,
    skip_bad: bool = False,
    batch_axes: dict[str, int | None] | None = None,
    stateful: dict[str, str] | None = None,
    verify: VerifyOptions | None = VerifyOptions(),
    progress: Progress | bool = null_progress,
    keep_failed: bool = False,
    recover: Any = None,
) -> QuantResult:
    """Quantize `model` (ONNX path, ModelProto, or torch.nn.Module with `example_inputs`).

    `config` is a QuantConfig or a preset name ('int8', 'fp16', 'int8-dynamic'). Static INT8
    needs `calib_data`; `eval_data` (held out) is used for the report, with `labels` for accuracy.
    A saved `plan` is re-applied as it is, without calibration. With an accuracy budget
    (`max_drop` below FP32's score on `metric`, or an absolute `min_metric`), a precision search
    keeps the most sensitive layers in FP16 weights / FP32 until the budget holds on half of
    `eval_data`, and confirms it on the other half; with `skip_bad`, corrupt or invalid samples are
    skipped and counted in the report instead of stopping the run; `metric` is a registry name, a Metric, or
    any callable(reference_outputs, candidate_outputs, labels) -> float, higher is better; options as
    'detection-yolo:conf=0.25'. None: the report's metric is inferred from the outputs (the budget's
    too). A budget missed on the held-out half leaves `output` unwritten unless `keep_failed`
    (report['budget']['met'] is False; the CLI exits 3).
    `batch_axes` names the axis holding samples of inputs where it is not what the graph shows
    ({"state": 1}; None: no batch axis, the array goes with every batch, e.g. {"sr": None}).
    `stateful` pairs state inputs with the outputs that carry them ({"state": "stateN"}): each
    item of the data is then one sequence, run chunk by chunk with its state carried, in
    calibration and in evaluation (`lowbit.stateful`).
    `recover` (a `lowbit.recover.Recover`): after calibration, fine-tune the plan to match the FP32
    model's outputs on the calibration data (label-free distillation, within its time/step budget).
    `output` is checked before any work (not an input, not a device; a symlink is written through)
    and written only after verification succeeded: a failed run leaves an earlier file as it was.
    `progress=True` draws progress on stderr (rich bars in a terminal, one line per stage with its
    elapsed time elsewhere); a callable(stage, done, total) receives it instead (lowbit.progress).

    >>> result = lowbit.quantize("mobilenet_v2.onnx", "int8", "calib/", output="mbv2.int8.onnx",
    ...                          preprocess=ImagePreprocess.imagenet())
    >>> print(result.report)
    """
    cfg = as_config(config)
    timings: dict[str, float] = {}
    t = t_start = time.perf_counter()
    reset_peak_rss()
    search = calib = None
    subgraph_note = weight_only_note = ""
    before_fit = None
    # the output is checked before any work and written only after everything that can fail has run
    # (verification included): a failed run leaves an earlier output as it was
    inputs = {"model": model, "calib_data": calib_data, "eval_data": eval_data, "plan": plan, "labels": labels}
    outputs = {"output": output, "checkpoint": checkpoint}  # the search writes its checkpoint as it goes
    out_target = check_outputs(outputs, inputs).get("output")
    progress("load", 0, None)
    loaded = load_model(model, example_inputs)
    source_sizes = sizes(loaded.proto)  # the output must be smaller (checked after emit)
    check_outputs(outputs, {"model file": list(loaded.files)})
    progress("prepare", 0, None)
    prepared = prepare(loaded)
    check_data_options(prepared.proto, prepared.inputs, batch_axes, stateful)  # before any work
    if verify is None:  # the loaded model is only verification's reference: not kept without it
        loaded = LoadedModel(onnx.ModelProto(), loaded.name, loaded.source, loaded.path)
    if plan is None:
        cfg = resolve_transformer(cfg, prepared.proto)
    t = _stage(timings, "load+prepare", t)

    if plan is not None:
        qplan = plan_to_apply(plan, prepared.proto)  # checked like user input (lowbit.plan_schema)
        if qplan.config.get("weights"):  # a transformer plan records its recipe under 'transformer'
            cfg = QuantConfig.from_dict({**qplan.config, "transformer": bool(qplan.config.get("transformer"))})
        if qplan.precision != "int8":
            raise ConfigError(f"re-applying a plan works for static int8 plans; this one is '{qplan.precision}'. "
                              f"Quantize again with precision '{qplan.precision}' instead.")
        if qplan.model_fingerprint and qplan.model_fingerprint != prepared.fingerprint:
            changed = [a["name"] for a in qplan.config.get("algorithms", [])]
            if changed:
                raise ConfigError(
                    f"this plan was made with algorithms that change the float weights ({', '.join(changed)}), "
                    "so it applies to the float model they produced, not to this one. Re-apply it to the model "
                    "saved with --save-float-model (API: result.float_model).")
            log.warning("the plan was made for another model (fingerprint %s, this model %s)",
                        qplan.model_fingerprint, prepared.fingerprint)
        _check_plan_fits(qplan, prepared)
    elif cfg.precision in ("int8", "int4"):
        if calib_data is None:
            raise DataError(f"static {cfg.precision} needs calibration data (calib_data / --calib): a few hundred "
                            "representative inputs. Use precision 'int8-dynamic' or 'fp16' to quantize without data.")
        calib = model_feeds(calib_data, prepared.proto, prepared.inputs, batch_axes=batch_axes, stateful=stateful,
                            preprocess=preprocess, limit=calib_limit, skip_bad=skip_bad)
        budget = max_drop is not None or min_metric is not None
        if budget and cfg.precision == "int4":
            raise ConfigError("an accuracy budget (max_drop / min_metric) searches int8 mixes; give an int8 preset "
                              "(the search itself moves layers to 4-bit weights where the budget allows).")
        original = prepared.proto if budget else None
        # calibrate_plan gets the only reference to the prepared model (popped from a list: no local
        # here keeps it), so the copies the algorithms make replace it instead of adding to it
        handed = [prepared]
        prepared = PreparedModel(onnx.ModelProto(), prepared.name, prepared.source, prepared.inputs)
        if cfg.precision == "int4":  # MatMulNBits blocks + w4a8 Conv (lowbit.int4_recipe)
            from lowbit.int4_recipe import calibrate_int4

            float_model, qplan, before_fit = calibrate_int4(handed.pop(), cfg, calib, progress, timings)
        else:
            float_model, qplan, before_fit = calibrate_plan(handed.pop(), cfg, calib, progress, timings)
        if recover is not None:  # distil FP32 (the unfitted float model) into the plan (lowbit.recover)
            from lowbit.recover import recover_plan

            float_model, qplan = recover_plan(float_model, qplan, before_fit, calib, recover, progress, timings)
        prepared = PreparedModel(float_model, prepared.name, prepared.source, prepared.inputs)
        if not budget and source_sizes.file > WEIGHT_ONLY_MAX_BYTES:
            before_fit = None  # only float layers (the search's, a weight-only fallback) need the unfitted weights
        t = _stage(timings, "calibrate+plan", t)
        search = None
        if budget:
            if eval_data is None:
                raise DataError("an accuracy budget (max_drop / min_metric) needs held-out eval_data to measure it on.")
            from lowbit.analysis.budget import budget_metric, budget_search

            metric = budget_metric(metric, original, eval_data, prepared.inputs, preprocess)
            qplan, search = budget_search(prepared, original, before_fit, qplan, cfg, eval_data, labels,
                                          preprocess, metric.metric, max_drop, min_metric, search_evals,
                                          verify.eval_limit if verify is not None else None, progress,
                                          checkpoint)
            # the layers the search kept in float run with their float weights, not their INT8 fits
            float_model = restore_float_layers(float_model, before_fit, qplan)
            qplan.model_fingerprint = fingerprint(float_model)
            prepared = PreparedModel(float_model, prepared.name, prepared.source, prepared.inputs)
            t = _stage(timings, "search", t)

    if cfg.precision == "fp16" and plan is None:
        fp16_arithmetic = target_traits(cfg.target).fp16
        qmodel, qplan = (emit_fp16(prepared.proto, cfg.keep_io_types) if fp16_arithmetic
                         else emit_fp16_weights(prepared.proto))
    elif cfg.precision == "int8-dynamic" and plan is None:
        qmodel, qplan = emit_dynamic(prepared.proto, target=cfg.target)
    else:
        from lowbit.emit.int4 import emit_mixed

        progress("emit", 0, None)
        qmodel = emit_mixed(prepared.proto, qplan)  # emit_qdq, plus block-wise weights the search chose
        # ONNX Runtime does not fuse Q/DQ inside If / Loop / Scan bodies: their weights are stored w8
        subgraph_note = describe(store_subgraph_weights(qmodel, "w8"))
        share_identical_initializers(qmodel)  # zero points, passthrough scales, weights copied per layer
        if (plan is None and search is None and before_fit is not None
                and source_sizes.file >= TINY_MODEL and qmodel.ByteSize() >= source_sizes.file):
            # the Q/DQ nodes cost more than the INT8 weights save (lowbit.emit.weight_only); test-sized
            # models may grow, as check_smaller allows
            why = (f"quantizing the activations made the file {qmodel.ByteSize():,} bytes, not smaller than the "
                   f"input's {source_sizes.file:,}")
            qplan = weight_only_plan(prepared.proto, qplan, why)
            float_model = restore_float_layers(prepared.proto, before_fit, qplan)
            qplan.model_fingerprint = fingerprint(float_model)
            prepared = PreparedModel(float_model, prepared.name, prepared.source, prepared.inputs)
            qmodel = emit_mixed(prepared.proto, qplan)
            subgraph_note = describe(store_subgraph_weights(qmodel, "w8"))
            share_identical_initializers(qmodel)
            weight_only_note = f"All layers weight-only INT8 (FP32 arithmetic): {why}."
    qbytes = qmodel.SerializeToString()
    check_smaller(config if isinstance(config, str) else qplan.precision, source_sizes, qmodel, len(qbytes))
    t = _stage(timings, "emit", t)

    timings["total_quantize"] = time.perf_counter() - t_start
    quantizer = {"wall_s": timings["total_quantize"], "peak_rss_mb": peak_rss_mb(),
                 "stages": dict(timings)}

    label = _label(qplan)  # 'w4a8', not 'int8', where the weights are 4-bit
    report = Report({
        "title": f"lowbit: {loaded.name} -> {label}",
        "model": {"name": loaded.name, "source": loaded.source},
        "precision": label,
        "output_path": str(output) if output is not None else None,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "nodes": nodes_summary(qplan),
        "quantizer": quantizer,
    })
    if qplan.precision == "int8":
        report.data["layer_precisions"] = [{"name": n.name, "precision": n.precision} for n in qplan.nodes.values()
                                           if n.op not in ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")]
    if calib is not None:
        _note_skipped(report, "calibration", calib)
    if weight_only_note:
        report.data["notes"].append(weight_only_note)
    if subgraph_note:
        report.data["notes"].append(subgraph_note + ": ONNX Runtime does not fuse integer kernels inside subgraphs.")
    if cfg.precision == "int8" and plan is None and search is not None:
        from lowbit.analysis.budget import budget_outcome

        report.data["search"] = search
        report.data["budget"] = budget_outcome(search, qplan.precision)
        if not search["met_budget"]:
            report.data["notes"].append(
                f"The accuracy budget ({search['metric']} >= {search['floor']:.4f}) was not met within "
                f"{search['evaluations']} evaluations; the best mix found is returned.")
    if verify is not None:
        data = eval_data if eval_data is not None else calib_data
        if eval_data is None:
            report.data["notes"].append("No held-out data given: fidelity is measured on the calibration data.")
        if data is not None:
            float_model = prepared.proto
            eval_feeds = model_feeds(data, loaded.proto, prepared.inputs, batch_axes=batch_axes, stateful=stateful,
                                     labels=labels, preprocess=preprocess, limit=verify.eval_limit, skip_bad=skip_bad)
            _verify_into(report, loaded.proto.SerializeToString(), {label: (qbytes, float_model, qplan)},
                         eval_feeds, verify, progress, metric=metric)
            _note_skipped(report, "evaluation", eval_feeds)
        else:
            report.data["notes"].append("No data given: fidelity, parity and latency were not measured.")
        timings["verify"] = time.perf_counter() - t
    out_path = None
    missed = report.data.get("budget", {}).get("met") is False
    if missed:
        log.warning("the accuracy budget was missed on the held-out data: %s",
                    "the output is written anyway (keep_failed)" if keep_failed else "nothing is written")
    if out_target is not None and (keep_failed or not missed):
        atomic_write_bytes(out_target, qbytes)
        out_path = Path(output)
    return QuantResult(qmodel, qplan, report, out_path, timings, prepared.proto)


def _check_plan_fits(plan: QuantPlan, prepared: PreparedModel) -> None:
    """Every node and tensor the plan names is in the model, with the op, type and shape it assumes."""
    check_plan_fits(plan, prepared.proto)


def nodes_summary(plan: QuantPlan) -> dict:
    return {
        "quantized": [{"name": n.name, "op": n.op, "precision": n.precision} for n in plan.quantized_nodes()],
        "skipped": [{"name": n.name, "op": n.op, "reason": n.reason} for n in plan.float_nodes()],
        "folded": [{"name": k, "into": v} for k, v in plan.folded.items()],
    }


def _label(plan: QuantPlan) -> str:
    """What a plan's run is called in reports: its precision, 'w4a8' for 4-bit weights on the int8
    kernels, 'int4' for the int4 preset's blocks (lowbit.int4_recipe records its group size)."""
    from lowbit.config import run_label

    if plan.precision == "int8" and plan.config.get("group_size"):
        return "int4"
    return run_label(plan.precision, (plan.config.get("weights") or {}).get("dtype"))


def _variant(label: str, precision: str, model_bytes: bytes) -> dict:
    return {"label": label, "precision": precision, "size_bytes": len(model_bytes), "latency_ms": {},
            "fidelity": None, "accuracy": None, "parity": None, "energy_uj": None}


def _verify_into(report: Report, reference: bytes,
                 candidates: dict[str, tuple[bytes, onnx.ModelProto | None, QuantPlan | None]],
                 data: FeedSource, opts: VerifyOptions, progress: Progress, labeled: FeedSource | None = None,
                 metric: Any = None) -> None:
    """Fill the report's variants: FP32 first, then each candidate. Fidelity and task metrics
    (`metric`, else inferred from the outputs: lowbit.verify.task) on `data`; top-1 accuracy on
    `labeled` when given (else on `data` if it has labels)."""
    from lowbit.metrics.spec import parse_metric
    from lowbit.verify.latency import noise_warnings
    from lowbit.verify.task import fill_task_metrics

    variants = [_variant("fp32", "fp32", reference)]
    variants += [_variant(k, (_label(p) if p else k), b) for k, (b, _, p) in candidates.items()]
    accs, _ = compare_models(reference, {k: b for k, (b, _, _) in candidates.items()}, data, progress, collect=True)
    ref_acc = None
    for v in variants[1:]:
        acc = accs[v["label"]]
        v["fidelity"] = acc.result()
        ref_acc, v["accuracy"] = acc.accuracy()
    variants[0]["accuracy"] = ref_acc
    if labeled is not None:
        accs_l, _ = compare_models(reference, {k: b for k, (b, _, _) in candidates.items()}, labeled, progress)
        for v in variants[1:]:
            variants[0]["accuracy"], v["accuracy"] = accs_l[v["label"]].accuracy()
    variants[0]["fidelity"] = {"samples": variants[1]["fidelity"]["samples"] if len(variants) > 1 else 0,
                               "sqnr_db": None, "cosine": 1.0, "top1_agreement": 1.0, "kl": 0.0}
    report.data["variants"] = variants
    fill_task_metrics(report.data, variants, accs, None if metric is None else parse_metric(metric))
    del accs  # the held outputs
    for v in variants[1:]:
        qbytes, float_model, plan = candidates[v["label"]]
        if float_model is not None and plan is not None and plan.precision == "int8":
            progress("parity", 0, None)
            v["parity"] = check_parity(qbytes, float_model, plan, data, opts.parity_batches)
            progress("kernel check", 0, None)
            v["kernels"] = kernel_check(qbytes, plan)
        if float_model is not None and plan is not None:
            # priced on what executes: FP16 without FP16 arithmetic (x86) computes in FP32
            fp16 = target_traits(plan.config.get("target") or "auto").fp16
            v["energy_uj"] = estimate_energy(float_model, priced_precisions(plan, qbytes, fp16))["total_uj"]
            if variants[0]["energy_uj"] is None:
                variants[0]["energy_uj"] = estimate_energy(float_model)["total_uj"]
                report.data["energy_source"] = ENERGY_SOURCE
                report.data["energy_assumptions"] = list(ENERGY_ASSUMPTIONS)
    if opts.threads:
        first = next(iter(data))  # one sample: each input cut on its own batch axis
        axes = getattr(data, "axes", {})
        feeds = {k: take_rows(a, axes.get(k, 0), slice(0, 1)) for k, a in first.feeds.items()}
        models = {"fp32": reference, **{k: b for k, (b, _, _) in candidates.items()}}
        lat = measure_latency(models, feeds, opts.threads, opts.latency_runs, progress=progress)
        for v in variants:
            v["latency_ms"] = lat[v["label"]]
        report.data["notes"] += noise_warnings(lat)
    report.data["variants"] = variants


@accepts_progress
def evaluate(reference: Any, candidates: Any, data: Any, *, labels: Any = None, preprocess: Any = None,
             verify: VerifyOptions = VerifyOptions(), progress: Progress | bool = null_progress,
             metric: Any = None) -> Report:
    """Compare one or more candidate ONNX models (made by lowbit or not) with a reference on `data`;
    `metric` (a name with options, 'detection-yolo:conf=0.25', a Metric or a callable) is the
    report's headline, else it is inferred from the reference's outputs. `progress`: as quantize's.

    >>> print(lowbit.evaluate("mbv2.onnx", "mbv2.int8.onnx", "eval/", preprocess=ImagePreprocess.imagenet()))
    """
    ref = load_model(reference)
    if not isinstance(candidates, (list, tuple, dict)):
        candidates = [candidates]
    items = candidates.items() if isinstance(candidates, dict) else [(str(c) if isinstance(c, (str, Path)) else f"candidate{i}", c) for i, c in enumerate(candidates)]
    loaded = {}
    for label, c in items:
        m = load_model(c)
        label = Path(label).name if isinstance(label, str) else label
        loaded[label] = m
    specs = prepare(ref, optimize=False).inputs
    for label, m in loaded.items():
        other = [s.name for s in prepare(m, optimize=False).inputs]
        if other != [s.name for s in specs]:
            raise ModelError(f"candidate {label} takes inputs {other}, the reference takes {[s.name for s in specs]}: "
                             "they cannot be compared on the same data.")
    report = Report({"title": f"lowbit eval: {ref.name}", "model": {"name": ref.name, "source": ref.source},
                     "precision": ", ".join(loaded), "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    feeds = as_feeds(data, specs, labels=labels, preprocess=preprocess, limit=verify.eval_limit)
    ref_bytes = ref.proto.SerializeToString()
    cand_bytes = {k: m.proto.SerializeToString() for k, m in loaded.items()}
    _check_comparable(ref_bytes, cand_bytes, feeds)
    _verify_into(report, ref_bytes, {k: (b, None, None) for k, b in cand_bytes.items()}, feeds, verify, progress,
                 metric=metric)
    return report


def _check_comparable(reference: bytes, candidates: dict[str, bytes], data: FeedSource) -> None:
    """Every candidate loads in ONNX Runtime and, on the first sample, gives as many outputs as the
    reference, each of the same shape (on the first batch): otherwise no metric can compare them."""
    from lowbit.observe import run_batch, session

    batch = next(iter(data), None)
    if batch is None:
        raise DataError("the evaluation data holds no samples.")
    ref = [np.shape(o) for o in run_batch(session(reference, threads=1), batch)]
    for label, b in candidates.items():
        try:
            sess = session(b, threads=1)
        except Exception as e:  # ONNX Runtime raises its own untyped errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"candidate {label} cannot be loaded by ONNX Runtime: {first}") from None
        got = [np.shape(o) for o in run_batch(sess, batch)]
        if got != ref:
            raise ModelError(f"candidate {label} gives outputs of shapes {got}, the reference {ref}: they cannot "
                             "be compared. Give a candidate quantized from this reference.")


@accepts_progress
def compare_variants(reference: Any, results: dict[str, QuantResult], eval_data: Any, *,
                     labeled: tuple[Any, Any] | None = None, preprocess: Any = None,
                     verify: VerifyOptions = VerifyOptions(), progress: Progress = null_progress,
                     title: str | None = None) -> Report:
    """One report comparing the FP32 `reference` with several quantize() results side by side.

    `labeled` = (data, labels) adds top-1 accuracy. `progress`: as quantize's (True draws it on stderr).
    """
    ref = load_model(reference)
    specs = prepare(ref, optimize=False).inputs
    report = Report({"title": title or f"lowbit: {ref.name}", "model": {"name": ref.name, "source": ref.source},
                     "precision": ", ".join(results), "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    first = next(iter(results.values()), None)
    if first is not None:
        report.data["nodes"] = nodes_summary(first.plan if "int8" not in results else results["int8"].plan)
        report.data["quantizer"] = {"wall_s": sum(r.timings.get("total_quantize", 0.0) for r in results.values()),
                                    "peak_rss_mb": peak_rss_mb(),
                                    "stages": {f"{k}:{s}": v for k, r in results.items() for s, v in r.timings.items()}}
    feeds = as_feeds(eval_data, specs, preprocess=preprocess, limit=verify.eval_limit)
    lab = as_feeds(labeled[0], specs, labels=labeled[1], preprocess=preprocess) if labeled else None
    cands = {k: (r.model.SerializeToString(), r.float_model, r.plan) for k, r in results.items()}
    _verify_into(report, ref.proto.SerializeToString(), cands, feeds, verify, progress, lab)
    return report


@accepts_progress
def analyze(model: Any, calib_data: Any, eval_data: Any, config: QuantConfig | str = "int8", *,
            metric: Any = "top1-agreement", preprocess: Any = None, labels: Any = None, eval_limit: int | None = 64,
            ways: tuple[str, ...] = ("only", "all_but"), progress: Progress = null_progress) -> Report:
    """Per-layer sensitivity of `model` under `config`, measured both ways, with statistics, the
    likely cause of each problem in plain words, and the fix lowbit would apply. `progress`: as
    quantize's (True draws it on stderr).

    >>> print(lowbit.analyze("mbv2.onnx", calib, held_out).data["layers"][0])
    """
    from lowbit.analysis import PlanEvaluator, analyze_layers
    from lowbit.calibration import Percentile

    cfg = as_config(config)
    if cfg.precision == "int4":
        raise ConfigError("analyze ranks the layers of a static int8 plan; the int4 preset's blocks are not one. "
                          "Analyze 'w4a8' (4-bit weights on the int8 kernels) or compare an int4 model with "
                          "FP32 by `lowbit eval`.")
    loaded = load_model(model)
    prepared = prepare(loaded)
    cfg = resolve_transformer(cfg, prepared.proto)
    calib = as_feeds(calib_data, prepared.inputs, preprocess=preprocess)
    float_model, plan, before_fit = calibrate_plan(prepared, cfg, calib, progress)
    acts = [n for n, t in plan.tensors.items() if t.role == "activation"]
    stats = collect_stats(float_model, acts, calib, lambda name: Percentile(99.99), progress)
    evaluator = PlanEvaluator(float_model, as_feeds(eval_data, prepared.inputs, labels=labels,
                                                    preprocess=preprocess, limit=eval_limit), metric,
                              reference=prepared.proto, float_weights=before_fit)
    ranking = analyze_layers(float_model, plan, evaluator, stats, ways, progress)
    full = evaluator.score(plan)
    report = Report({"title": f"lowbit analyze: {loaded.name}", "model": {"name": loaded.name, "source": loaded.source},
                     "precision": plan.precision, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "nodes": nodes_summary(plan)})
    report.data["analysis"] = {
        "metric": metric if isinstance(metric, str) else getattr(metric, "registry_name", "custom"),
        "reference_metric": evaluator.reference_score, "all_int8_metric": full.metric, "all_int8_sqnr_db": full.sqnr_db,
        "samples": int(len(evaluator.reference)), "evaluations": evaluator.evaluations,
        "layers": [s.to_dict() for s in ranking]}
    report.data["layers"] = [{"name": s.name, "op": s.op, "precision": "int8", "sqnr_db": s.only_this_sqnr_db}
                             for s in ranking]
    report.data["tables"] = [{
        "title": "Layers ranked by sensitivity (most sensitive first)",
        "header": ["layer", "op", "metric: only this INT8", "metric: all but this INT8", "SQNR only this (dB)",
                   "likely cause", "fix lowbit would apply"],
        "rows": [[s.name, s.op, f"{s.only_this_metric:.4f}", f"{s.all_but_this_metric:.4f}",
                  f"{s.only_this_sqnr_db:.1f}", "; ".join(s.causes) or "-", "; ".join(s.fixes) or "-"]
                 for s in ranking]}]
    report.data["histograms"] = _worst_histograms(stats, plan, ranking[:4], float_model)
    return report


def _worst_histograms(stats, plan: QuantPlan, worst, model) -> list[dict]:
    """Input-activation histograms of the worst layers, with the plan's clipping range."""
    from lowbit.graph import GraphIndex

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


def _note_skipped(report: Report, what: str, feeds: FeedSource) -> None:
    """Bad samples skipped on request: counted and named in the report, never silently."""
    skipped = list(getattr(feeds, "skipped", []) or [])
    if skipped:
        report.data.setdefault("skipped_samples", {})[what] = [{"source": s, "reason": r} for s, r in skipped]
        report.data["notes"].append(f"Skipped {len(skipped)} bad {what} sample(s) (first: {skipped[0][0]}: "
                                    f"{skipped[0][1]}).")
