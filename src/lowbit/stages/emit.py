"""The emit stage of `lowbit.quantize`: the job's plan (or, for fp16 / int8-dynamic, its preset)
becomes the deployable model. For static INT8 it also decides the form that ships: QDQ, or the
plan's weight-only form where the Q/DQ nodes cost more bytes than they save, where the static model
runs slower than FP32 here (`lowbit.emit.fallback`), or where it lost its outputs' signal or
decisions (`lowbit.emit.fidelity_guard`)."""

from __future__ import annotations

from dataclasses import replace

import onnx

from lowbit.algorithms.weight_only_gptq import WEIGHT_ONLY_GPTQ, gptq_weight_only
from lowbit.emit.dynamic import emit_dynamic, stored_convs
from lowbit.emit.fallback import weight_only_instead
from lowbit.emit.fidelity_guard import WEIGHT_ONLY_FOR_FIDELITY, OutputFidelity
from lowbit.emit.fp16 import emit_fp16, emit_fp16_weights
from lowbit.emit.int4 import emit_mixed
from lowbit.emit.shared_constants import share_identical_initializers
from lowbit.emit.size_check import TINY_MODEL, check_smaller
from lowbit.emit.subgraphs import describe, store_subgraph_weights
from lowbit.emit.weight_only import weight_only_plan
from lowbit.load.prepare import fingerprint
from lowbit.plan.quant_plan import NodePlan, QuantPlan
from lowbit.progress import Progress
from lowbit.search.float_layers import restore_float_layers
from lowbit.stages.job import QuantizeJob
from lowbit.target.cpu import target_traits
from lowbit.target.model_speed import ModelSpeed, whole_model_speed
from lowbit.verify.variants import plan_label


def emit_stage(job: QuantizeJob, preset_name: str | None, progress: Progress) -> tuple[onnx.ModelProto, bytes]:
    """Emit stage: the plan (or, for fp16 / int8-dynamic, the preset) becomes the deployable model,
    which must be smaller than its input."""
    cfg, float_model = job.cfg, job.prepared.proto
    if cfg.precision == "fp16" and not job.reapplied:
        fp16_arithmetic = target_traits(cfg.target).fp16
        qmodel, job.plan = emit_fp16(float_model, cfg.keep_io_types) if fp16_arithmetic else emit_fp16_weights(float_model)
    elif cfg.precision == "int8-dynamic" and not job.reapplied:
        rounded = 0
        if job.calib is not None:  # data given: the INT8-stored Conv weights are GPTQ-rounded against it
            progress("weight-only rounding", 0, None)
            convs = stored_convs(float_model)
            w8 = QuantPlan("int8-dynamic", nodes={n: NodePlan(n, "Conv", "w8") for n in convs})
            float_model, rounded = gptq_weight_only(float_model, w8, job.calib, cfg.seed, progress)
        qmodel, job.plan = emit_dynamic(float_model, target=cfg.target,
                                        algorithm_choices={WEIGHT_ONLY_GPTQ: {"layers": rounded}} if rounded else None)
        if rounded:
            job.notes.append(f"{rounded} convolutions' INT8-stored weights rounded by GPTQ on the calibration data.")
    else:
        qmodel = _emit_int8(job, progress)
    qbytes = qmodel.SerializeToString()
    check_smaller(preset_name or job.plan.precision, job.source_sizes, qmodel, len(qbytes))
    return qmodel, qbytes


def _emit_int8(job: QuantizeJob, progress: Progress) -> onnx.ModelProto:
    """QDQ (plus block-wise weights the search chose); where the Q/DQ nodes cost more bytes than the
    INT8 weights save, or the static INT8 model runs slower than FP32 here (objective 'latency'), the
    weight-only form of the plan (`lowbit.emit.weight_only`)."""
    progress("emit", 0, None)
    qmodel, note = emit_static(job.prepared.proto, job.plan)
    size = job.source_sizes.file
    # test-sized models may grow, as check_smaller allows, and their time is the runtime's overhead
    if not job.reapplied and job.search is None and job.before_fit is not None and size >= TINY_MODEL:
        def measure() -> ModelSpeed:  # timed once: before recovery where there was one
            return job.speed or time_against_fp32(job, qmodel, job.prepared.proto, progress)

        fallback, job.speed = weight_only_instead(qmodel.ByteSize(), size,
                                                  measure if speed_checked(job, job.plan) else None)
        if fallback is not None:
            qmodel, note = _ship_weight_only(job, _weight_only_form(job, fallback.node_why, progress), fallback.why)
        elif job.calib is not None and plan_label(job.plan) == "int8":  # w4a8's weight-only form is 8-bit: larger
            qmodel, note = _guard_fidelity(job, qmodel, note, progress)
    if note:
        job.notes.append(note + ": ONNX Runtime does not fuse integer kernels inside subgraphs.")
    return qmodel


def _weight_only_form(job: QuantizeJob, node_why: str, progress: Progress) -> tuple[QuantPlan, onnx.ModelProto]:
    """(the weight-only plan, the float model it applies to): layers kept in float get their FP32
    weights back; with calibration data the INT8-stored weights are GPTQ-rounded against the layers'
    FP32 inputs (`lowbit.algorithms.weight_only_gptq`)."""
    plan = weight_only_plan(job.prepared.proto, job.plan, node_why)
    float_model = restore_float_layers(job.prepared.proto, job.before_fit, plan)
    if job.calib is not None:
        progress("weight-only rounding", 0, None)
        float_model, rounded = gptq_weight_only(float_model, plan, job.calib, job.cfg.seed, progress)
        if rounded:  # recorded in the plan: re-applying it needs this float model (--save-float-model)
            choices = {**(plan.decisions.algorithm_choices or {}), WEIGHT_ONLY_GPTQ: {"layers": rounded}}
            plan = replace(plan, decisions=replace(plan.decisions, algorithm_choices=choices))
    plan.model_fingerprint = fingerprint(float_model)  # before emit: the file records the plan
    return plan, float_model


def _ship_weight_only(job: QuantizeJob, form: tuple[QuantPlan, onnx.ModelProto], why: str,
                      emitted: tuple[onnx.ModelProto, str] | None = None) -> tuple[onnx.ModelProto, str]:
    """The job's plan becomes its weight-only form (`_weight_only_form`), emitted (`emitted`: already)."""
    job.plan, float_model = form
    job.set_float_model(float_model)
    rounded = (job.plan.decisions.algorithm_choices or {}).get(WEIGHT_ONLY_GPTQ)
    how = f"; {rounded['layers']} layers' weights rounded by GPTQ on the calibration data" if rounded else ""
    job.notes.append(f"All layers weight-only INT8 (FP32 arithmetic): {why}{how}.")
    return emitted or emit_static(job.prepared.proto, job.plan)


def _guard_fidelity(job: QuantizeJob, qmodel: onnx.ModelProto, note: str, progress: Progress) -> tuple[onnx.ModelProto, str]:
    """`lowbit.emit.fidelity_guard`: the static model as emitted, or the weight-only form where the
    static one lost its output's signal or decisions on calibration data and the weight-only form keeps them."""
    # FP32 as given (kept for verification), else the float model before the plan-stage fits: the
    # prepared model then holds GPTQ's / bias correction's weights, not FP32's
    fp32 = job.loaded.proto if len(job.loaded.proto.graph.node) else job.before_fit
    fidelity = OutputFidelity(fp32, job.calib, states=job.state_outputs)
    check = fidelity.check(qmodel)
    form = candidate = None
    if check.needs_weight_only:
        form = _weight_only_form(job, WEIGHT_ONLY_FOR_FIDELITY, progress)
        candidate = emit_static(form[1], form[0])
        check.weight_only_sqnr_db, check.weight_only_decisions_kept = fidelity.measured(candidate[0])
    job.fidelity = check.to_dict()
    if check.weight_only_wins and form is not None:
        return _ship_weight_only(job, form, check.why(), candidate)
    return qmodel, note


def speed_checked(job: QuantizeJob, plan: QuantPlan) -> bool:
    """Whether the int8 presets time this plan's whole model against FP32 (objective 'latency', 8-bit
    weights, models from TINY_MODEL up; the caller rules out re-applied plans and search mixes)."""
    return (job.cfg.objective == "latency" and job.calib is not None and plan_label(plan) == "int8"
            and job.source_sizes.file >= TINY_MODEL)


def time_against_fp32(job: QuantizeJob, qmodel: onnx.ModelProto, float_model: onnx.ModelProto,
                       progress: Progress) -> ModelSpeed:
    """The emitted static INT8 model against the FP32 model as given (kept for verification), else
    `float_model`, the one its plan applies to, on one calibration sample."""
    progress("speed check", 0, None)
    fp32 = job.loaded.proto if len(job.loaded.proto.graph.node) else float_model
    return whole_model_speed(fp32.SerializeToString(), qmodel.SerializeToString(), job.calib.first_sample())


def emit_static(float_model: onnx.ModelProto, plan: QuantPlan) -> tuple[onnx.ModelProto, str]:
    qmodel = emit_mixed(float_model, plan)  # emit_qdq, plus block-wise weights the search chose
    # ONNX Runtime does not fuse Q/DQ inside If / Loop / Scan bodies: their weights are stored w8
    note = describe(store_subgraph_weights(qmodel, "w8"))
    share_identical_initializers(qmodel)  # zero points, passthrough scales, weights copied per layer
    return qmodel, note
