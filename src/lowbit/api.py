"""The Python API: one verb per intent. Composes the stages; holds no maths."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lowbit.algorithms.weight_only_gptq import WEIGHT_ONLY_GPTQ
from lowbit.calibration import Percentile
from lowbit.calibration.collect import collect_stats
from lowbit.config import QuantConfig
from lowbit.data import FeedSource, as_feeds
from lowbit.data.stateful import check_data_options
from lowbit.emit.size_check import sizes
from lowbit.emit.weight_only import WEIGHT_ONLY_MAX_BYTES
from lowbit.errors import ConfigError, DataError, ModelError
from lowbit.io import atomic_write_bytes, check_outputs
from lowbit.load.model import LoadedModel, load_model
from lowbit.load.prepare import PreparedModel, fingerprint, prepare
from lowbit.load.quantized import refuse_quantized
from lowbit.onnx.session import run_batch, session
from lowbit.plan.calibrate import calibrate
from lowbit.plan.fit import check_plan_fits, plan_to_apply
from lowbit.plan.int4_recipe import calibrate_int4
from lowbit.plan.quant_plan import QuantPlan
from lowbit.presets import as_config, resolve_transformer
from lowbit.progress import Progress, accepts_progress, null_progress
from lowbit.report import Report
from lowbit.search import PlanEvaluator, analyze_layers
from lowbit.search.budget import Budget, budget_metric, budget_outcome, budget_search
from lowbit.search.sensitivity import worst_histograms
from lowbit.stages.emit import emit_stage, emit_static, speed_checked, time_against_fp32
from lowbit.stages.job import DataOptions, QuantizeJob
from lowbit.target.memory import peak_rss_mb, reset_peak_rss
from lowbit.target.speed_prediction import predict_speed  # noqa: F401  (lowbit.api.predict_speed)
from lowbit.verify.variants import VerifyOptions, plan_label, verify_into

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


class _Clock:
    """Seconds per stage of one call (`QuantResult.timings`); the peak RSS is measured from its start."""

    def __init__(self) -> None:
        reset_peak_rss()
        self.timings: dict[str, float] = {}
        self.start = self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.t
        self.t = now


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
    ('plan:<step>': each algorithm, layer costs, calibration, clipping). The stage itself, which
    also returns the calibration statistics: `lowbit.plan.calibrate.calibrate`."""
    c = calibrate(prepared.proto, resolve_transformer(config, prepared.proto), calib, progress, timings)
    return c.model, c.plan, c.before_fit


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

    `config` is a QuantConfig or a preset name ('int8', 'fp16', 'int8-dynamic'). Static INT8 needs `calib_data`;
    `eval_data` (held out) is used for the report, with `labels` for accuracy. A saved `plan` is re-applied as it
    is, without calibration. With an accuracy budget (`max_drop` below FP32's score on `metric`, or an absolute
    `min_metric`), a precision search keeps the most sensitive layers in FP16 weights / FP32 until the budget holds
    on half of `eval_data`, and confirms it on the other half; with `skip_bad`, corrupt or invalid samples are
    skipped and counted in the report instead of stopping the run; `metric` is a registry name, a Metric, or any
    callable(reference_outputs, candidate_outputs, labels) -> float, higher is better; options as
    'detection-yolo:conf=0.25'. None: the report's metric is inferred from the outputs (the budget's too). A budget
    missed on the held-out half leaves `output` unwritten unless `keep_failed` (report['budget']['met'] is False;
    the CLI exits 3).
    `batch_axes` names the axis holding samples of inputs where it is not what the graph shows ({"state": 1}; None:
    no batch axis, the array goes with every batch, e.g. {"sr": None}). `stateful` pairs state inputs with the
    outputs that carry them ({"state": "stateN"}): each item of the data is then one sequence, run chunk by chunk
    with its state carried, in calibration and in evaluation (`lowbit.data.stateful`).
    `recover` (a `lowbit.recover.Recover`, or its budget: '10m'): after calibration, fine-tune the static plan to
    match the FP32 model's outputs on the calibration data (label-free distillation, within its time/step budget).
    `output` is checked before any work (not an input, not a device; a symlink is written through) and written only
    after verification succeeded: a failed run leaves an earlier file as it was. `progress=True` draws progress on
    stderr (rich bars in a terminal, one line per stage with its elapsed time elsewhere); a callable(stage, done,
    total) receives it instead (lowbit.progress).

    >>> result = lowbit.quantize("mobilenet_v2.onnx", "int8", "calib/", output="mbv2.int8.onnx",
    ...                          preprocess=ImagePreprocess.imagenet())
    >>> print(result.report)
    """
    clock = _Clock()
    recover = _recovery(recover, as_config(config), plan)  # a misplaced recover fails before any work
    outputs = {"output": output, "checkpoint": checkpoint}  # the search writes its checkpoint as it goes
    out_target = check_outputs(outputs, {"model": model, "calib_data": calib_data, "eval_data": eval_data,
                                         "plan": plan, "labels": labels}).get("output")
    data = DataOptions(batch_axes, stateful, preprocess, skip_bad)
    job = _load(model, example_inputs, as_config(config), outputs, data, verify, progress, recover)
    if plan is None:  # the recipe (CNN / transformer / mixed regions), chosen once
        job.cfg = resolve_transformer(job.cfg, job.prepared.proto)
    clock.lap("load+prepare")
    if plan is not None:
        _reapply(job, plan)
    elif job.cfg.precision in ("int8", "int4") or (job.cfg.precision == "int8-dynamic" and calib_data is not None):
        job.calib = _calibration_feeds(job, (calib_data, eval_data, labels), data, calib_limit)
        if job.cfg.precision != "int8-dynamic":  # static: calibrate (and search); int8-dynamic: GPTQ rounding
            budget = Budget(metric, max_drop, min_metric, search_evals) if (max_drop, min_metric) != (None, None) else None
            _calibrate(job, budget is not None, recover, progress, clock.timings)
            clock.lap("calibrate+plan")
            if budget is not None:
                metric = _search(job, budget, eval_data, labels, data, verify, progress, checkpoint, recover)
                clock.lap("search")
    qmodel, qbytes = emit_stage(job, config if isinstance(config, str) else None, progress)
    clock.lap("emit")
    report = _quantize_report(job, output, clock)
    if verify is not None:
        _verify_quantized(job, report, qbytes, (eval_data, calib_data, labels), data, verify, progress, metric, clock)
    out_path = _write_output(report, out_target, output, qbytes, keep_failed)
    return QuantResult(qmodel, job.plan, report, out_path, clock.timings, job.prepared.proto)


def _recovery(recover: Any, cfg: QuantConfig, plan: Any) -> Any:
    """`recover` as a `lowbit.recover.Recover` (a budget such as '10m' accepted), checked against the
    call: recovery trains the fake-quant graph of a static plan that calibration has just made."""
    if recover is None:
        return None
    if plan is not None:
        raise ConfigError("recover fine-tunes the plan calibration makes; a saved plan (plan= / --plan) is "
                          "re-applied as it is, without training. Give one of the two: recover a fresh "
                          "quantization (its plan can be saved and re-applied later).")
    if cfg.precision != "int8":
        raise ConfigError(f"recover fine-tunes static INT8 plans (presets int8, int8-fast, w4a8, int8-transformer); "
                          f"precision '{cfg.precision}' has no quantized activations to train against "
                          "(fp16 and int8-dynamic keep them in float; int4's MatMulNBits blocks are weight-only). "
                          "Drop recover or choose one of those presets.")
    from lowbit.recover import Recover  # torch: lowbit.extras names the extra to install

    if isinstance(recover, str):
        return Recover(recover)
    if not isinstance(recover, Recover):
        raise ConfigError(f"recover is a lowbit.recover.Recover or a budget such as '10m' or '500steps'; "
                          f"got {type(recover).__name__}.")
    return recover


def _load(model: Any, example_inputs: Any, cfg: QuantConfig, outputs: dict, data: DataOptions,
          verify: VerifyOptions | None, progress: Progress, recover: Any = None) -> QuantizeJob:
    """Load and prepare stages; the data options (batch axes, stateful pairs) and, with `recover`,
    whether recovery can train the graph, checked against the model before any work."""
    progress("load", 0, None)
    loaded = load_model(model, example_inputs)
    refuse_quantized(loaded.proto, loaded.name)
    source_sizes = sizes(loaded.proto)
    check_outputs(outputs, {"model file": list(loaded.files)})
    progress("prepare", 0, None)
    prepared = prepare(loaded)
    check_data_options(prepared.proto, prepared.inputs, data.batch_axes, data.stateful)
    if recover is not None:
        from lowbit.recover import check_recoverable

        check_recoverable(prepared.proto)
    if verify is None:  # the loaded model is only verification's reference: not kept without it
        loaded = LoadedModel(onnx.ModelProto(), loaded.name, loaded.source, loaded.path)
    return QuantizeJob(loaded, prepared, source_sizes, cfg, state_outputs=tuple((data.stateful or {}).values()))


def _reapply(job: QuantizeJob, given: QuantPlan | str | Path) -> None:
    """A saved static INT8 plan, checked like user input (`lowbit.plan.schema`) and against the
    model it is applied to; its own config replaces the call's."""
    plan = plan_to_apply(given, job.prepared.proto)
    if plan.config.get("weights"):  # a transformer plan records its recipe under 'transformer'
        job.cfg = QuantConfig.from_dict({**plan.config, "transformer": bool(plan.config.get("transformer"))})
    if plan.precision != "int8":
        raise ConfigError(f"re-applying a plan works for static int8 plans; this one is '{plan.precision}'. "
                          f"Quantize again with precision '{plan.precision}' instead.")
    if plan.model_fingerprint and plan.model_fingerprint != job.prepared.fingerprint:
        changed = [a["name"] for a in plan.config.get("algorithms", [])] + (["recover"] if plan.config.get("recover")
                                                                            else [])
        if (plan.decisions.algorithm_choices or {}).get(WEIGHT_ONLY_GPTQ):
            changed.append("GPTQ rounding of the weight-only form")
        if changed:
            raise ConfigError(
                f"this plan was made with algorithms that change the float weights ({', '.join(changed)}), "
                "so it applies to the float model they produced, not to this one. Re-apply it to the model "
                "saved with --save-float-model (API: result.float_model).")
        log.warning("the plan was made for another model (fingerprint %s, this model %s)",
                    plan.model_fingerprint, job.prepared.fingerprint)
    check_plan_fits(plan, job.prepared.proto)
    job.plan, job.reapplied = plan, True


def _calibration_feeds(job: QuantizeJob, given: tuple, data: DataOptions, limit: int | None) -> FeedSource:
    """The calibration feeds; the evaluation data's first batch is read first, so that data the model
    cannot take (wrong input names, shapes, labels) fails before minutes of calibration, not after."""
    calib_data, eval_data, labels = given
    if calib_data is None:
        raise DataError(f"static {job.cfg.precision} needs calibration data (calib_data / --calib): a few hundred "
                        "representative inputs. Use precision 'int8-dynamic' or 'fp16' to quantize without data.")
    if eval_data is not None:
        next(iter(data.feeds(eval_data, job.prepared, labels=labels, limit=1)), None)
    return data.feeds(calib_data, job.prepared, limit=limit)


def _calibrate(job: QuantizeJob, budget: bool, recover: Any, progress: Progress, timings: dict[str, float]) -> None:
    """Plan stage (`lowbit.plan.calibrate`; the int4 preset: `lowbit.plan.int4_recipe`), then, if
    asked, distillation of FP32 into the plan (`lowbit.recover`). The float model is handed over, so
    the copies the algorithms make replace it instead of adding to it (a budget search keeps the
    prepared model as its reference)."""
    if budget and job.cfg.precision == "int4":
        raise ConfigError("an accuracy budget (max_drop / min_metric) searches int8 mixes; give an int8 preset "
                          "(the search itself moves layers to 4-bit weights where the budget allows).")
    job.reference = job.prepared.proto if budget else None
    if job.cfg.precision == "int4":  # MatMulNBits blocks + w4a8 Conv
        float_model, plan, before_fit = calibrate_int4(job.take_float_model(), job.cfg, job.calib, progress, timings)
    else:
        c = calibrate(job.take_float_model(), job.cfg, job.calib, progress, timings)
        float_model, plan, before_fit = c.model, c.plan, c.before_fit
    if (recover is not None and not budget and speed_checked(job, plan)
            and job.source_sizes.file <= WEIGHT_ONLY_MAX_BYTES):  # else no weight-only form could ship
        # a plan that will ship weight-only for speed is not worth minutes of recovery
        job.speed = time_against_fp32(job, emit_static(float_model, plan)[0], float_model, progress)
        if job.speed.clearly_slower:
            job.notes.append("Recovery skipped: the static INT8 model runs slower than FP32 here, so its "
                             "weight-only form ships, which has no activations to recover.")
            recover = None
    if recover is not None:  # distil FP32 (the unfitted float model) into the plan; torch, imported here
        from lowbit.recover import recover_plan

        float_model, plan = recover_plan(float_model, plan, before_fit, job.calib, recover, progress, timings)
    job.set_float_model(float_model)
    job.plan = plan
    # only float layers (the search's, a weight-only fallback) need the unfitted weights
    job.before_fit = before_fit if budget or job.source_sizes.file <= WEIGHT_ONLY_MAX_BYTES else None


def _search(job: QuantizeJob, budget: Budget, eval_data: Any, labels: Any, data: DataOptions,
            verify: VerifyOptions | None, progress: Progress, checkpoint: str | Path | None, recover: Any) -> Any:
    """The precision search within the accuracy budget (`lowbit.search.budget`); returns the metric
    it used, which the report then leads with."""
    if eval_data is None:
        raise DataError("an accuracy budget (max_drop / min_metric) needs held-out eval_data to measure it on.")
    inputs = job.prepared.inputs
    choice = budget_metric(budget.metric, job.reference, eval_data, inputs, data.preprocess)
    feeds = as_feeds(eval_data, inputs, labels=labels, preprocess=data.preprocess,
                     limit=verify.eval_limit if verify is not None else None)
    # the layers the search keeps in float run with their float weights, not their INT8 fits; with
    # recover, mixes with fewer of them are recovered and judged too (lowbit.search.recovered)
    job.plan, job.search, float_model = budget_search(
        job.prepared.proto, job.plan, job.cfg, feeds, replace(budget, metric=choice.metric), reference=job.reference,
        float_weights=job.before_fit, checkpoint=checkpoint, progress=progress,
        recover=_mix_recovery(job, recover, progress))
    job.plan.model_fingerprint = fingerprint(float_model)
    job.set_float_model(float_model)
    return choice


def _mix_recovery(job: QuantizeJob, recover: Any, progress: Progress) -> Any:
    """recover(float model, plan) for the search's candidate mixes: the same options and teacher (the
    float model before plan-stage algorithms) as the recovery after calibration; None without recover."""
    if recover is None:
        return None
    from lowbit.recover import recover_plan

    return lambda float_model, plan: recover_plan(float_model, plan, job.before_fit, job.calib, recover, progress)


def _quantize_report(job: QuantizeJob, output: str | Path | None, clock: _Clock) -> Report:
    clock.timings["total_quantize"] = time.perf_counter() - clock.start
    if job.speed is not None:  # part of emit (or, with recover, of calibrate), reported on its own
        clock.timings["speed_check"] = job.speed.seconds
    plan, loaded = job.plan, job.loaded
    label = plan_label(plan)  # 'w4a8', not 'int8', where the weights are 4-bit
    report = Report({
        "title": f"lowbit: {loaded.name} -> {label}",
        "model": {"name": loaded.name, "source": loaded.source},
        "precision": label,
        "output_path": str(output) if output is not None else None,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "nodes": nodes_summary(plan),
        "quantizer": {"wall_s": clock.timings["total_quantize"], "peak_rss_mb": peak_rss_mb(),
                      "stages": dict(clock.timings)},
    })
    if plan.precision == "int8":
        report.data["layer_precisions"] = [{"name": n.name, "precision": n.precision} for n in plan.nodes.values()
                                           if n.op not in ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")]
    if job.calib is not None:
        _note_skipped(report, "calibration", job.calib)
    report.data["notes"] += job.notes
    if job.speed is not None:
        report.data["speed_check"] = job.speed.to_dict()
    if job.fidelity is not None:
        report.data["fidelity_check"] = job.fidelity
    if job.search is not None:
        report.data["search"] = job.search
        report.data["budget"] = budget_outcome(job.search, plan.precision)
        if not job.search["met_budget"]:
            report.data["notes"].append(
                f"The accuracy budget ({job.search['metric']} >= {job.search['floor']:.4f}) was not met within "
                f"{job.search['evaluations']} evaluations; the best mix found is returned.")
    return report


def _verify_quantized(job: QuantizeJob, report: Report, qbytes: bytes, given: tuple, data: DataOptions,
                      verify: VerifyOptions, progress: Progress, metric: Any, clock: _Clock) -> None:
    """Verify stage: fidelity, task metric, parity, kernels, energy and latency against the FP32
    model, on the held-out data (else the calibration data)."""
    eval_data, calib_data, labels = given
    source = eval_data if eval_data is not None else calib_data
    if eval_data is None:
        report.data["notes"].append("No held-out data given: fidelity is measured on the calibration data.")
    if source is None:
        report.data["notes"].append("No data given: fidelity, parity and latency were not measured.")
    else:
        loaded, plan = job.loaded, job.plan
        feeds = data.feeds(source, job.prepared, labels=labels, limit=verify.eval_limit, model=loaded.proto)
        verify_into(report, loaded.proto.SerializeToString(), {plan_label(plan): (qbytes, job.prepared.proto, plan)},
                    feeds, verify, progress, metric=metric)
        _note_skipped(report, "evaluation", feeds)
    clock.timings["verify"] = time.perf_counter() - clock.t


def _write_output(report: Report, target: Path | None, output: str | Path | None, qbytes: bytes,
                  keep_failed: bool) -> Path | None:
    """Write the model, unless the accuracy budget was missed on the held-out data."""
    missed = report.data.get("budget", {}).get("met") is False
    if missed:
        log.warning("the accuracy budget was missed on the held-out data: %s",
                    "the output is written anyway (keep_failed)" if keep_failed else "nothing is written")
    if target is None or (missed and not keep_failed):
        return None
    atomic_write_bytes(target, qbytes)
    return Path(output)


def nodes_summary(plan: QuantPlan) -> dict:
    return {
        "quantized": [{"name": n.name, "op": n.op, "precision": n.precision} for n in plan.quantized_nodes()],
        "skipped": [{"name": n.name, "op": n.op, "reason": n.reason} for n in plan.float_nodes()],
        "folded": [{"name": k, "into": v} for k, v in plan.folded.items()],
    }


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
    verify_into(report, ref_bytes, {k: (b, None, None) for k, b in cand_bytes.items()}, feeds, verify, progress,
                 metric=metric)
    return report


def _check_comparable(reference: bytes, candidates: dict[str, bytes], data: FeedSource) -> None:
    """Every candidate loads in ONNX Runtime and, on the first sample, gives as many outputs as the
    reference, each of the same shape (on the first batch): otherwise no metric can compare them."""
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
    verify_into(report, ref.proto.SerializeToString(), cands, feeds, verify, progress, lab)
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
    cfg = as_config(config)
    if cfg.precision == "int4":
        raise ConfigError("analyze ranks the layers of a static int8 plan; the int4 preset's blocks are not one. "
                          "Analyze 'w4a8' (4-bit weights on the int8 kernels) or compare an int4 model with "
                          "FP32 by `lowbit eval`.")
    loaded = load_model(model)
    prepared = prepare(loaded)
    cfg = resolve_transformer(cfg, prepared.proto)
    calib = as_feeds(calib_data, prepared.inputs, preprocess=preprocess)
    c = calibrate(prepared.proto, cfg, calib, progress)
    float_model, plan = c.model, c.plan
    acts = [n for n, t in plan.tensors.items() if t.role == "activation"]
    stats = c.stats  # histograms of the activations, as the plan's ranges were chosen from them
    if not all(hasattr(stats.observers.get(n), "counts") for n in acts):  # a config without histograms
        stats = collect_stats(float_model, acts, calib, lambda name: Percentile(99.99), progress)
    evaluator = PlanEvaluator(float_model, as_feeds(eval_data, prepared.inputs, labels=labels,
                                                    preprocess=preprocess, limit=eval_limit), metric,
                              reference=prepared.proto, float_weights=c.before_fit)
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
    report.data["histograms"] = worst_histograms(stats, plan, ranking[:4], float_model)
    return report


def _note_skipped(report: Report, what: str, feeds: FeedSource) -> None:
    """Bad samples skipped on request: counted and named in the report, never silently."""
    skipped = list(getattr(feeds, "skipped", []) or [])
    if skipped:
        report.data.setdefault("skipped_samples", {})[what] = [{"source": s, "reason": r} for s, r in skipped]
        report.data["notes"].append(f"Skipped {len(skipped)} bad {what} sample(s) (first: {skipped[0][0]}: "
                                    f"{skipped[0][1]}).")
