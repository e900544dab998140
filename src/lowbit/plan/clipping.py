"""How hard to clip activations, chosen per model by the error it causes at the model's output.

Percentile clipping trades rounding error (a narrower range, finer steps) against clipping error
(the largest values cut). Which side wins depends on the network: on MobileNetV2, whose residual
branches carry rare huge values, clipping at the 99.99th percentile keeps top-1 agreement at 0.80
where the 99.999th keeps 0.73 (tuning crops); on dlib's face ResNet the 99.99th costs embedding
cosine (0.9988 vs 0.9994 with the full range). No single level serves both, so lowbit calibrates
once (the histograms are kept) and tries each candidate level for all activations: the plan whose
simulated output is closest to FP32 (SQNR over calibration samples) is kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import onnx

from lowbit.calibration import Percentile
from lowbit.calibration.histogram import HistogramObserver
from lowbit.config import QuantConfig
from lowbit.data import Batch
from lowbit.emit.qdq import emit_simulation
from lowbit.metrics.output_error import OutputError, Outputs
from lowbit.calibration.collect import CalibrationStats
from lowbit.onnx.session import run_batch, session
from lowbit.plan.quant_plan import QuantPlan

# the configured level is always a candidate; these are added
LEVELS = (99.99, 99.999, 100.0)
SAMPLES = 32


def output_sqnr(reference: list[Outputs], candidate: list[Outputs]) -> float:
    """SQNR pooled over the batches (per batch the model's outputs, or its one output); each pair
    compared `aligned` (outputs whose length depends on the values may differ in shape), each
    output and a detection head's boxes and scores by their own energy (`lowbit.metrics.output_error`)."""
    return OutputError(reference).sqnr(reference, candidate)


def choose_clipping(model: onnx.ModelProto, plan_for: Callable[[QuantConfig], QuantPlan], stats: CalibrationStats, config: QuantConfig,
                    calib: Iterable[Batch]) -> tuple[QuantPlan, QuantConfig, dict]:
    """(plan, config, record) for the percentile level whose plan's simulation is closest to FP32 on
    up to SAMPLES calibration inputs. `plan_for(config)` builds the plan from `stats` with `config`;
    only histogram-calibrated (Percentile) activations are searched, others return the plan as is."""
    method = config.activations.calibration
    if not isinstance(method, Percentile):
        return plan_for(config), config, {}
    batches = list(itertools.islice(iter(calib), SAMPLES))
    # sessions without ONNX Runtime's memory arena, each freed before the next is built: only one
    # model's buffers are alive at a time, and only while it runs
    fp32 = session(model, arena=False)
    outputs = [o.name for o in model.graph.output]
    reference = [run_batch(fp32, b, outputs) for b in batches]
    del fp32
    measure = OutputError(reference)
    levels = sorted({method.percentile, *LEVELS})
    histograms = [o for o in stats.observers.values() if isinstance(o, HistogramObserver)]
    saved = [o.chooser for o in histograms]
    results, plans = {}, {}
    try:
        for level in levels:
            cfg = config.with_(activations=replace(config.activations, calibration=Percentile(level, method.bins)))
            chooser = cfg.activations.calibration
            for o in histograms:
                o.chooser = chooser
            plan = plan_for(cfg)
            sim = session(emit_simulation(model, plan), arena=False)
            results[level] = measure.sqnr(reference, [run_batch(sim, b, outputs) for b in batches])
            del sim
            plans[level] = (plan, cfg)
    finally:
        for o, c in zip(histograms, saved):
            o.chooser = c
    best = max(levels, key=lambda lv: (results[lv], lv == method.percentile))
    record = {"levels": {str(k): v for k, v in results.items()}, "chosen": best, "samples": len(batches),
              "criterion": "output SQNR of the simulated plan vs FP32 on calibration inputs",
              "error": measure.description}
    plan, cfg = plans[best]
    return plan, cfg, record


def simulated_sqnr(model: onnx.ModelProto, plans: dict[str, QuantPlan], calib: Iterable[Batch]) -> dict[str, float]:
    """{name: output SQNR vs FP32} of each plan's simulation on up to SAMPLES calibration inputs."""
    batches = list(itertools.islice(iter(calib), SAMPLES))
    fp32 = session(model, arena=False)
    outputs = [o.name for o in model.graph.output]
    reference = [run_batch(fp32, b, outputs) for b in batches]
    del fp32
    out = {}
    for name, plan in plans.items():
        sim = session(emit_simulation(model, plan), arena=False)
        out[name] = output_sqnr(reference, [run_batch(sim, b, outputs) for b in batches])
        del sim
    return out
