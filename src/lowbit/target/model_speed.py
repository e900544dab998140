"""Is the whole static-INT8 model slower than FP32 on this machine?

Per-layer costs (lowbit.target.layer_costs) time each weighted layer alone; they do not see what
the full graph pays between integer and float code. An activation without an integer kernel is
the common case: ONNX Runtime fuses HardSwish (HardSigmoid x Mul) into an FP32 convolution for
free, but in INT8 it runs as DequantizeLinear -> HardSigmoid -> QuantizeLinear -> QLinearMul after
every QLinearConv. On SLANet-plus (PP-LCNet, 75 HardSwish) those cost 33 ms where the integer
convolutions saved 18: INT8 58 ms against FP32 48 at 1 thread. So the int8 preset times the model
it emitted against FP32, both whole, once; `clearly_slower` is the same rule as a layer's
(lowbit.target.latency_choice: the interquartile range of paired per-run ratios above 1 plus a
margin), with a smaller margin, as whole-model times vary less than one layer's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lowbit.target.latency_choice import RatioEstimate, estimate_ratio
from lowbit.verify.latency import measure_latency

# INT8 / FP32 time must exceed 1 by this much beyond its spread (the zoo benchmark calls a variant
# SLOWER when its speed-up interval lies below 0.98)
WHOLE_MODEL_MARGIN = 0.02
# the timing's own cost: runs of both models until about this many seconds, within RUNS
TIME_BUDGET_S = 2.0
RUNS = (8, 30)


@dataclass(frozen=True)
class ModelSpeed:
    """INT8 / FP32 time of the whole model at 1 thread (CPU time of the calling thread, which runs the
    whole graph at 1 thread: a busy machine does not move it)."""

    estimate: RatioEstimate
    seconds: float = 0.0  # what the timing itself took (wall)

    @property
    def clearly_slower(self) -> bool:
        return self.estimate.low > 1.0 + WHOLE_MODEL_MARGIN

    def to_dict(self) -> dict:
        e = self.estimate
        return {"threads": 1, "clock": "thread CPU time", "fp32_ms": round(e.fp32_ms, 3),
                "int8_ms": round(e.int8_ms, 3), "int8_fp32_ratio": round(e.ratio, 4),
                "ratio_iqr": [round(e.low, 4), round(e.high, 4)], "runs": e.runs, "margin": WHOLE_MODEL_MARGIN,
                "int8_clearly_slower": self.clearly_slower, "seconds": round(self.seconds, 2)}


def whole_model_speed(fp32: bytes, int8: bytes, feeds: dict[str, np.ndarray]) -> ModelSpeed:
    """Both models timed interleaved at 1 thread on `feeds` (one sample), in two blocks of fresh
    sessions; as many paired runs as fit in about TIME_BUDGET_S, within RUNS."""
    start, t0 = time.perf_counter(), time.thread_time()
    probe = measure_latency({"fp32": fp32, "int8": int8}, feeds, threads=(1,), runs=2, warmup=1, clock="thread")
    per_round = sum(v["1"]["median"] for v in probe.values()) / 1e3
    spent = time.thread_time() - t0
    runs = int(np.clip((TIME_BUDGET_S - spent) / max(per_round, 1e-6), *RUNS))
    lat = measure_latency({"fp32": fp32, "int8": int8}, feeds, threads=(1,), runs=runs, warmup=2,
                          keep_samples=True, blocks=2, clock="thread")
    return ModelSpeed(estimate_ratio(lat["fp32"]["1"]["samples"], lat["int8"]["1"]["samples"]),
                      time.perf_counter() - start)
