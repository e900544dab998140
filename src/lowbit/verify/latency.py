"""ONNX Runtime latency: every variant timed interleaved in one process, so that the machine's
noise hits all of them alike and their ratios are fair. Medians, with p10/p90."""

from __future__ import annotations

import time

import numpy as np

from lowbit.observe import session
from lowbit.progress import Progress, null_progress


def measure_latency(models: dict[str, bytes], feeds: dict[str, np.ndarray], threads: tuple[int, ...] = (1, 2),
                    runs: int = 50, warmup: int = 5, progress: Progress = null_progress) -> dict[str, dict]:
    """{label: {str(threads): {median, p10, p90, runs}}} in milliseconds, batch as given in `feeds`.
    Sessions as `lowbit.observe.session` makes them: worker threads do not spin-wait."""
    result: dict[str, dict] = {k: {} for k in models}
    total = len(threads) * runs
    done = 0
    for t in threads:
        sessions = {k: session(v, threads=t) for k, v in models.items()}
        for s in sessions.values():
            for _ in range(warmup):
                s.run(None, feeds)
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(runs):
            for k, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, feeds)
                times[k].append((time.perf_counter() - t0) * 1e3)
            done += 1
            progress("latency", done, total)
        for k, ts in times.items():
            a = np.asarray(ts)
            result[k][str(t)] = {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
                                 "p90": float(np.percentile(a, 90)), "runs": len(ts)}
    return result
