"""When a static INT8 plan ships in its weight-only form (`lowbit.emit.weight_only`: INT8-stored
weights, FP32 arithmetic) instead of as a QDQ model: the QDQ file is not smaller than the input
(Q/DQ nodes named after long tensors cost more bytes than the INT8 weights save), or the whole
INT8 graph runs slower than FP32 on this machine (`lowbit.target.model_speed`; objective
'latency' only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lowbit.target.model_speed import ModelSpeed


@dataclass(frozen=True)
class WeightOnly:
    """Why the weight-only form ships: `why` for the report's note (measured numbers included),
    `node_why` for each node's reason in the plan, which the model file records and which therefore
    holds no timing (the file's bytes must not vary with noise)."""

    why: str
    node_why: str


def weight_only_instead(qdq_bytes: int, input_bytes: int, measure_speed: Callable[[], ModelSpeed] | None
                        ) -> tuple[WeightOnly | None, ModelSpeed | None]:
    """(the reason to ship the weight-only form or None, the speed measured or None). The speed is
    measured (by `measure_speed`, None: not asked) only when the file size has not decided already."""
    if qdq_bytes >= input_bytes:
        why = f"quantizing the activations made the file {qdq_bytes:,} bytes, not smaller than the input's {input_bytes:,}"
        return WeightOnly(why, why), None
    if measure_speed is None:
        return None, None
    speed = measure_speed()
    if not speed.clearly_slower:
        return None, speed
    e = speed.estimate
    why = (f"the static INT8 model took {e.ratio:.2f}x FP32's time at 1 thread on this machine (CPU time, {e.runs} "
           f"paired runs, interquartile {e.low:.2f}-{e.high:.2f}x): its activations pass through float code between "
           "the integer kernels (an activation without an integer kernel, such as HardSwish, costs more than they "
           "save); objective 'size' keeps INT8 arithmetic")
    node_why = ("the static INT8 model ran slower than FP32 on this machine beyond noise (timings in the report's "
                "speed_check; objective 'size' keeps INT8 arithmetic)")
    return WeightOnly(why, node_why), speed
