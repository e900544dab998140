"""`lowbit bench`: predict, before any calibration, whether INT8 / FP16 will be faster than FP32
on this machine, from one-layer timings (lowbit.target.layer_costs)."""

from __future__ import annotations

from typing import Any

from lowbit.target.latency_choice import MARGIN
from lowbit.target.layer_costs import measure_layer_costs
from lowbit.load.model import load_model
from lowbit.load.prepare import prepare
from lowbit.progress import Progress, null_progress
from lowbit.plan.selection import slow_int8_layers


def predict_speed(model: Any, threads: int = 1, progress: Progress = null_progress) -> dict:
    """Before any calibration: each weighted layer's measured FP32 / INT8 / FP16 time on this
    machine, the precision lowbit would pick for speed, and the predicted totals.

    >>> lowbit.target.speed_prediction.predict_speed("mobilenet_v2.onnx")["total"]["int8_speedup"]
    """
    prepared = prepare(load_model(model))
    costs = measure_layer_costs(prepared.proto, threads=threads, progress=progress)
    slow = slow_int8_layers(prepared.proto, costs)
    layers = []
    for c in costs.values():
        pick = "fp32" if c.node in slow else "int8"
        r = c.int8_ratio()  # the choice weighs the spread of the runs, not only the medians
        layers.append({"node": c.node, "op": c.op, "fp32_ms": c.fp32_ms, "int8_ms": c.int8_ms, "fp16_ms": c.fp16_ms,
                       "int8_speedup": c.int8_speedup, "int8_fp32_ratio": r.ratio, "ratio_iqr": [r.low, r.high],
                       "int8_slower_beyond_noise": r.clearly_slower, "runs": r.runs, "choice": pick})
    fp32 = sum(c.fp32_ms for c in costs.values())
    mixed = sum(l["fp32_ms"] if l["choice"] == "fp32" else l["int8_ms"] for l in layers)
    all_int8 = sum(c.int8_ms for c in costs.values())
    fp16 = sum(c.fp16_ms for c in costs.values())
    return {"model": prepared.name, "threads": threads, "layers": layers,
            "total": {"fp32_ms": fp32, "int8_ms": all_int8, "int8_latency_plan_ms": mixed, "fp16_ms": fp16,
                      "int8_speedup": fp32 / all_int8 if all_int8 else 0.0,
                      "int8_latency_plan_speedup": fp32 / mixed if mixed else 0.0,
                      "fp16_speedup": fp32 / fp16 if fp16 else 0.0},
            "note": "sums of one-layer timings (batch 1) of the weighted layers; activations-only ops and "
                    "layout changes are not included, so totals predict direction more than exact ratios. A layer "
                    "stays FP32 only when INT8 is slower beyond the runs' spread plus a "
                    f"{100 * MARGIN:.0f}% margin and it holds little of the weights"}
