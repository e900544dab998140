"""Parity: ONNX Runtime running the emitted integer model vs lowbit's float simulation of the plan.

The tolerance is one quantization step of each output's own calibrated range on an 8-bit grid:
the contract is that ONNX Runtime computes what the plan says, up to requantization rounding.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lowbit.data import Batch
from lowbit.observe import run_batch, session
from lowbit.plan import QuantPlan

PASS_FRACTION = 0.999


def output_step(rng: tuple[float, float]) -> float:
    lo, hi = min(rng[0], 0.0), max(rng[1], 0.0)
    return max((hi - lo) / 255.0, 1e-12)


def check_parity(deployed: bytes, simulation: bytes, plan: QuantPlan, data: Iterable[Batch],
                 max_batches: int = 16) -> dict:
    """{within_one_step, max_steps, elements, passed, per_output} over up to `max_batches` batches."""
    real = session(deployed)
    sim = session(simulation, optimize=False)
    names = [o.name for o in real.get_outputs()]
    within = np.zeros(len(names))
    count = np.zeros(len(names))
    worst = np.zeros(len(names))
    for i, batch in enumerate(data):
        if i >= max_batches:
            break
        a, b = run_batch(real, batch), run_batch(sim, batch)
        for k, name in enumerate(names):
            step = output_step(plan.observed.get(name, (float(np.min(b[k])), float(np.max(b[k])))))
            steps = np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)) / step
            within[k] += int(np.sum(steps <= 1.0 + 1e-6))
            count[k] += steps.size
            worst[k] = max(worst[k], float(steps.max()) if steps.size else 0.0)
    frac = float(within.sum() / count.sum()) if count.sum() else 1.0
    return {
        "within_one_step": frac,
        "max_steps": float(worst.max()) if worst.size else 0.0,
        "elements": int(count.sum()),
        "passed": frac >= PASS_FRACTION,
        "per_output": {n: {"within_one_step": float(w / c) if c else 1.0, "max_steps": float(m)}
                       for n, w, c, m in zip(names, within, count, worst)},
    }
