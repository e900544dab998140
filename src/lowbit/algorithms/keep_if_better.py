"""Keep a plan-stage algorithm's result only where it brings the quantized model closer to FP32.

Learned rounding minimises each layer's own output error. That is what the model's output needs on
some networks and not on others: on dlib's face ResNet GPTQ raised the INT8 embedding cosine from
0.99942 to 0.99967, on MobileNetV2 it was a wash (other photos: SQNR +0.1 dB, top-1 agreement
-0.003, KL +0.005) at three times the quantization time. So the `int8` preset runs GPTQ through
this wrapper: the plan is simulated with and without the algorithm's weights, each followed by the
algorithms in `then` (bias correction: what GPTQ gains before it, bias correction mostly gains
without it, 3.7 of MobileNetV2's 4.3 dB), and GPTQ's weights are kept only if the output SQNR vs
FP32 rises clearly. The decision and both SQNRs go into plan.decisions.algorithm_choices.

The comparison uses calibration batches the algorithms did not fit: every `HOLDOUT`-th batch
(up to `samples` of them) is held out of their data; a model calibrated on fewer than MIN_BATCHES
batches is judged on the fitted ones, and the record says so.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import onnx

from lowbit.core.fidelity import paired_gain_db, sqnr_db
from lowbit.emit.qdq import emit_simulation
from lowbit.errors import ConfigError
from lowbit.metrics.output_error import OutputError, Outputs
from lowbit.onnx.session import run_batch, session
from lowbit.plan.algorithm import Algorithm, AlgorithmContext, algorithm_from_dict, register_algorithm
from lowbit.plan.quant_plan import QuantPlan
from lowbit.target.memory import release_free_memory

log = logging.getLogger(__name__)

HOLDOUT = 4  # every 4th calibration batch judges, the others fit
MIN_BATCHES = 8  # below this the algorithm fits all batches and is judged on them too


def _output_error(measure: OutputError, reference: Outputs, sim, batch, outputs: list[str]) -> float:
    err = measure.error(reference, run_batch(sim, batch, outputs))
    release_free_memory()  # the run's buffers: the C heap would grow over the batches
    return err


class _Split:
    """Re-iterable: the held-out batches of `source` (every HOLDOUT-th, the first `samples` of them)
    or the others."""

    def __init__(self, source: Iterable, held: bool, samples: int) -> None:
        self.source, self.held, self.samples = source, held, samples

    def __iter__(self) -> Iterator:
        for i, b in enumerate(self.source):
            if (i % HOLDOUT == HOLDOUT - 1 and i // HOLDOUT < self.samples) == self.held:
                yield b


@register_algorithm("keep-if-better")
@dataclass(frozen=True)
class KeepIfBetter(Algorithm):
    """Runs `algorithm` (a plan-stage algorithm) and keeps its model and plan only if the simulated
    output SQNR vs FP32 on `samples` held-out calibration inputs rises by more than `min_gain_db`
    with `confidence` (paired bootstrap over the inputs: a gain that a few inputs carry is not
    trusted). The margin is there because held-out calibration inputs still resemble the fitted
    ones (crops of the same photos, augmentations of the same faces): on MobileNetV2 GPTQ's
    0.3-0.6 dB there was a wash on other photos (SQNR +0.1 dB, top-1 agreement -0.003, KL +0.005),
    where the face ResNet's 3.7 dB held up (embedding cosine 0.99942 -> 0.99967).
    The plan-stage algorithms `then` run after it either way and are part of the comparison: what
    GPTQ gains before bias correction, bias correction would mostly have gained without it. The one
    knob: `samples` (more is a surer decision, and slower)."""

    algorithm: Algorithm | dict
    then: tuple[Algorithm | dict, ...] = ()
    samples: int = 32
    confidence: float = 0.95
    min_gain_db: float = 0.5

    stage = "plan"

    def __post_init__(self) -> None:
        algs = [algorithm_from_dict(a) if isinstance(a, dict) else a  # dicts: from a saved plan's config
                for a in (self.algorithm, *self.then)]
        for a in algs:
            if not isinstance(a, Algorithm) or a.stage != "plan":
                raise ConfigError(f"KeepIfBetter wraps plan-stage algorithms such as GPTQ(); got {a!r}")
        object.__setattr__(self, "algorithm", algs[0])
        object.__setattr__(self, "then", tuple(algs[1:]))
        if self.samples < 1 or not 0.5 <= self.confidence < 1 or self.min_gain_db < 0:
            raise ConfigError(f"KeepIfBetter needs samples >= 1, 0.5 <= confidence < 1 and min_gain_db >= 0; got "
                              f"{self.samples}, {self.confidence}, {self.min_gain_db}")

    def to_dict(self) -> dict:
        return {"name": self.registry_name, "algorithm": self.algorithm.to_dict(),
                "then": [a.to_dict() for a in self.then], "samples": self.samples,
                "confidence": self.confidence, "min_gain_db": self.min_gain_db}

    def apply(self, model: onnx.ModelProto, plan: QuantPlan | None,
              ctx: AlgorithmContext) -> tuple[onnx.ModelProto, QuantPlan | None]:
        if plan is None or ctx.calib is None:
            raise ConfigError("KeepIfBetter runs on a plan with calibration data (stage 'plan').")
        batches = list(_Split(ctx.calib, True, self.samples))
        fit_ctx = replace(ctx, calib=_Split(ctx.calib, False, self.samples))
        if len(batches) < MIN_BATCHES // HOLDOUT:
            batches, fit_ctx = list(itertools.islice(iter(ctx.calib), self.samples)), ctx
        in_sample = fit_ctx is ctx
        name = self.algorithm.registry_name
        t = time.perf_counter()
        fp32 = session(model, arena=False)
        outputs = [o.name for o in model.graph.output]
        reference = [run_batch(fp32, b, outputs) for b in batches]
        del fp32

        measure = OutputError(reference)  # each output, and a detection head's boxes and scores, by its own energy
        signal = np.array([measure.signal(r) for r in reference])

        def then(m: onnx.ModelProto, p: QuantPlan, c: AlgorithmContext) -> tuple[onnx.ModelProto, QuantPlan]:
            t = time.perf_counter()
            for alg in self.then:
                m, p = alg.apply(m, p, c)
                t = ctx.timed(f"plan:keep-if-better:{alg.registry_name}", t)
            return m, p

        def noise(m: onnx.ModelProto, p: QuantPlan) -> np.ndarray:
            sim = session(simulation(m, p), arena=False)
            t = time.perf_counter()
            out = np.array([_output_error(measure, r, sim, b, outputs) for r, b in zip(reference, batches)])
            ctx.timed("plan:keep-if-better:score", t)
            return out

        def simulation(m: onnx.ModelProto, p: QuantPlan) -> bytes:
            """The arm's simulation after `then`, serialized; the model `then` made, the simulation's
            proto and the heap they leave are freed before ONNX Runtime parses its own copy."""
            m, p = then(m, copy.deepcopy(p), fit_ctx)
            sim = emit_simulation(m, p)
            del m
            release_free_memory()
            data = sim.SerializeToString()
            del sim
            return data

        # the plain arm first: its simulations run before the fitted model exists, and only its
        # per-input errors outlive them; the arm that loses is freed as soon as the comparison is made
        plain_plan = copy.deepcopy(plan)
        ctx.timed("plan:keep-if-better:score", t)
        noise_without = noise(model, plain_plan)
        t = time.perf_counter()
        fitted_model, fitted_plan = self.algorithm.apply(model, plan, fit_ctx)
        ctx.timed(f"plan:keep-if-better:{name}", t)
        noise_with = noise(fitted_model, fitted_plan)
        gain, low = paired_gain_db(noise_without, noise_with, 1.0 - self.confidence, ctx.seed)
        kept = low > self.min_gain_db
        if kept:
            base_model, base_plan = fitted_model, fitted_plan
        else:
            base_model, base_plan = model, plain_plan
        del fitted_model, fitted_plan, plain_plan
        # the comparison held batches out; what ships fits `then` on all of them
        chosen_model, chosen_plan = then(base_model, base_plan, ctx)
        log.info("%s: output SQNR gain %.2f dB (%.0f%% lower bound %.2f dB): %s", name, gain,
                 100 * self.confidence, low, "kept" if kept else "dropped")
        choices = dict(chosen_plan.decisions.algorithm_choices or {})
        choices[name] = {"kept": kept, "sqnr_with_db": sqnr_db(signal.sum(), noise_with.sum()),
                         "sqnr_without_db": sqnr_db(signal.sum(), noise_without.sum()),
                         "gain_lower_bound_db": low, "confidence": self.confidence,
                         "min_gain_db": self.min_gain_db,
                         "samples": len(batches), "held_out": not in_sample, "error": measure.description,
                         "criterion": "output SQNR of the simulated plan vs FP32 on calibration batches "
                                      + ("the algorithm also fitted" if in_sample else "it did not fit")}
        chosen_plan.decisions.algorithm_choices = choices
        return chosen_model, chosen_plan
