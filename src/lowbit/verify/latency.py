"""ONNX Runtime latency: every variant timed interleaved in one process, in a shuffled order each
round, so that the machine's noise and any order effect hit all of them alike and their ratios are
fair. Medians, with p10/p90; optionally every round's time, for paired confidence intervals."""

from __future__ import annotations

import time

import numpy as np

from lowbit.observe import session
from lowbit.progress import Progress, null_progress


def measure_latency(models: dict[str, bytes], feeds: dict[str, np.ndarray], threads: tuple[int, ...] = (1, 2),
                    runs: int = 50, warmup: int = 5, progress: Progress = null_progress,
                    keep_samples: bool = False, seed: int = 0) -> dict[str, dict]:
    """{label: {str(threads): {median, p10, p90, runs[, samples]}}} in milliseconds, batch as given in
    `feeds`. Round r's samples of all variants were taken back to back (see `speedup_interval`).
    Sessions as `lowbit.observe.session` makes them: worker threads do not spin-wait."""
    result: dict[str, dict] = {k: {} for k in models}
    labels = list(models)
    order_rng = np.random.default_rng(seed)
    total = len(threads) * runs
    done = 0
    for t in threads:
        sessions = {k: session(v, threads=t) for k, v in models.items()}
        for s in sessions.values():
            for _ in range(warmup):
                s.run(None, feeds)
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(runs):
            for i in order_rng.permutation(len(labels)):
                k = labels[i]
                t0 = time.perf_counter()
                sessions[k].run(None, feeds)
                times[k].append((time.perf_counter() - t0) * 1e3)
            done += 1
            progress("latency", done, total)
        for k, ts in times.items():
            a = np.asarray(ts)
            result[k][str(t)] = {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
                                 "p90": float(np.percentile(a, 90)), "runs": len(ts)}
            if keep_samples:
                result[k][str(t)]["samples"] = [round(float(x), 4) for x in a]
        del sessions
    return result


def speedup_interval(reference: list[float], variant: list[float], confidence: float = 0.95,
                     resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """median(reference) / median(variant) and its bootstrap interval, resampling whole rounds (the
    two were timed in the same rounds, so a noisy round moves both)."""
    ref, var = np.asarray(reference, np.float64), np.asarray(variant, np.float64)
    if ref.shape != var.shape or ref.size == 0:
        raise ValueError(f"paired samples needed: {ref.size} reference rounds vs {var.size} variant rounds")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ref.size, size=(resamples, ref.size))
    ratios = np.median(ref[idx], axis=1) / np.median(var[idx], axis=1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(np.median(ref) / np.median(var)), float(lo), float(hi)
