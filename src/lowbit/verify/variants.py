"""Verify stage as the API runs it: fill a report's variants (FP32 first, then each candidate) with
fidelity, task metrics, accuracy, parity, kernel check, energy and latency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from lowbit.config import run_label
from lowbit.data import FeedSource
from lowbit.errors import ConfigError
from lowbit.metrics.spec import parse_metric
from lowbit.plan.quant_plan import QuantPlan
from lowbit.progress import Progress
from lowbit.report import Report
from lowbit.target.cpu import target_traits
from lowbit.verify.energy import ASSUMPTIONS as ENERGY_ASSUMPTIONS
from lowbit.verify.energy import SOURCE as ENERGY_SOURCE
from lowbit.verify.energy import estimate as estimate_energy
from lowbit.verify.energy import priced_precisions
from lowbit.verify.fidelity import compare_models
from lowbit.verify.fusion import kernel_check
from lowbit.verify.latency import measure_latency, noise_warnings
from lowbit.verify.parity import check_parity
from lowbit.verify.task import fill_task_metrics


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


def variant_record(label: str, precision: str, model_bytes: bytes) -> dict:
    return {"label": label, "precision": precision, "size_bytes": len(model_bytes), "latency_ms": {},
            "fidelity": None, "accuracy": None, "parity": None, "energy_uj": None}


def verify_into(report: Report, reference: bytes,
                 candidates: dict[str, tuple[bytes, onnx.ModelProto | None, QuantPlan | None]],
                 data: FeedSource, opts: VerifyOptions, progress: Progress, labeled: FeedSource | None = None,
                 metric: Any = None) -> None:
    """Fill the report's variants: FP32 first, then each candidate. Fidelity and task metrics
    (`metric`, else inferred from the outputs: lowbit.verify.task) on `data`; top-1 accuracy on
    `labeled` when given (else on `data` if it has labels)."""
    variants = [variant_record("fp32", "fp32", reference)]
    variants += [variant_record(k, (plan_label(p) if p else k), b) for k, (b, _, p) in candidates.items()]
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
        feeds = data.first_sample()
        models = {"fp32": reference, **{k: b for k, (b, _, _) in candidates.items()}}
        lat = measure_latency(models, feeds, opts.threads, opts.latency_runs, progress=progress)
        for v in variants:
            v["latency_ms"] = lat[v["label"]]
        report.data["notes"] += noise_warnings(lat)
    report.data["variants"] = variants


def plan_label(plan: QuantPlan) -> str:
    """What a plan's run is called in reports: its precision, 'w4a8' for 4-bit weights on the int8
    kernels, 'int4' for the int4 preset's blocks (lowbit.plan.int4_recipe records its group size)."""
    if plan.precision == "int8" and plan.config.get("group_size"):
        return "int4"
    return run_label(plan.precision, (plan.config.get("weights") or {}).get("dtype"))
