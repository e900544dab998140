"""ONNX Runtime latency: every variant timed interleaved in one process, in a shuffled order each
round, so that the machine's noise and any order effect hit all of them alike and their ratios are
fair. The rounds run in blocks, each with freshly made sessions: where a session's threads land on
the CPU moves its time by several percent for its whole life (two sessions of one graph differed
by 7% at 2 threads here), and only new sessions sample that. Medians, with p10/p90; optionally
every round's time, for paired confidence intervals over blocks and rounds."""

from __future__ import annotations

import time

import numpy as np

from lowbit.onnx.session import session
from lowbit.progress import Progress, null_progress

CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def measure_latency(models: dict[str, bytes], feeds: dict[str, np.ndarray], threads: tuple[int, ...] = (1, 2),
                    runs: int = 50, warmup: int = 5, progress: Progress = null_progress,
                    keep_samples: bool = False, seed: int = 0, blocks: int = 1, clock: str = "wall"
                    ) -> dict[str, dict]:
    """{label: {str(threads): {median, p10, p90, runs[, samples, blocks]}}} in milliseconds, batch as
    given in `feeds`. Round r's samples of all variants were taken back to back; `blocks` groups of
    rounds each use new sessions (see `speedup_interval`). Sessions as `lowbit.onnx.session.session`
    makes them: worker threads do not spin-wait.

    `clock='thread'` times each call by the calling thread's CPU time, for 1 thread only (ONNX
    Runtime then runs the whole graph on that thread): on a machine shared with other jobs the wall
    time of a call also holds the slices the scheduler gave them, more for a long call than a short
    one (Silero's LSTM at 1 thread under a load of 14: 17.8 ms wall, 4.0 ms CPU, as on an idle machine)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}; got {clock!r}")
    if clock == "thread" and any(t != 1 for t in threads):
        raise ValueError(f"clock='thread' measures 1-thread runs only (other threads' CPU is not counted); "
                         f"got threads={threads}")
    now = CLOCKS[clock]
    result: dict[str, dict] = {k: {} for k in models}
    labels = list(models)
    rng = np.random.default_rng(seed)
    blocks = max(1, min(blocks, runs))
    total = len(threads) * runs
    done = 0
    for t in threads:
        times: dict[str, list[float]] = {k: [] for k in models}
        for b in range(blocks):
            sessions = {labels[i]: session(models[labels[i]], threads=t) for i in rng.permutation(len(labels))}
            for s in sessions.values():
                for _ in range(warmup):
                    s.run(None, feeds)
            for _ in range(runs * (b + 1) // blocks - runs * b // blocks):
                for i in rng.permutation(len(labels)):
                    k = labels[i]
                    t0 = now()
                    sessions[k].run(None, feeds)
                    times[k].append((now() - t0) * 1e3)
                done += 1
                progress("latency", done, total)
            del sessions
        for k, ts in times.items():
            a = np.asarray(ts)
            result[k][str(t)] = {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
                                 "p90": float(np.percentile(a, 90)), "runs": len(ts)}
            if keep_samples:
                result[k][str(t)]["samples"] = [round(float(x), 4) for x in a]
                result[k][str(t)]["blocks"] = blocks
    return result


def speedup_interval(reference: list[float], variant: list[float], confidence: float = 0.95,
                     resamples: int = 2000, seed: int = 0, blocks: int = 1) -> tuple[float, float, float]:
    """median(reference) / median(variant) and its bootstrap interval. The two were timed in the
    same rounds, so whole rounds are resampled (a noisy round moves both); with `blocks` (rounds
    split evenly into groups that each had their own sessions) blocks are resampled first, then
    rounds within them, so the interval includes how much a session's placement moves its time."""
    ref, var = np.asarray(reference, np.float64), np.asarray(variant, np.float64)
    if ref.shape != var.shape or ref.size == 0:
        raise ValueError(f"paired samples needed: {ref.size} reference rounds vs {var.size} variant rounds")
    rng = np.random.default_rng(seed)
    n = ref.size
    blocks = max(1, min(blocks, n))
    edges = [n * b // blocks for b in range(blocks + 1)]
    chosen = rng.integers(0, blocks, size=(resamples, blocks))
    starts, sizes = np.asarray(edges[:-1])[chosen], np.diff(edges)[chosen]          # (R, B)
    per = n // blocks
    offsets = (rng.random((resamples, blocks, per)) * sizes[..., None]).astype(np.int64)
    idx = (starts[..., None] + offsets).reshape(resamples, -1)
    ratios = np.median(ref[idx], axis=1) / np.median(var[idx], axis=1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(np.median(ref) / np.median(var)), float(lo), float(hi)


# p90 / p10 above this: the machine was busy or throttling; medians of the variants may still be
# comparable (they were interleaved), but the absolute times are not to be quoted
NOISY_SPREAD = 1.3


def noise_warnings(latency: dict[str, dict], limit: float = NOISY_SPREAD) -> list[str]:
    """A warning per thread count where some variant's p90 / p10 exceeds `limit`.

    >>> noise_warnings({"fp32": {"1": {"median": 60, "p10": 43, "p90": 85, "runs": 30}}})[0][:40]
    'Latency at 1 thread(s) is noisy: fp32 p10'
    """
    by_threads: dict[str, list[str]] = {}
    for label, per in latency.items():
        for t, s in per.items():
            lo, hi = s.get("p10") or 0.0, s.get("p90") or 0.0
            if lo > 0 and hi / lo > limit:
                by_threads.setdefault(str(t), []).append(f"{label} p10-p90 {lo:.2f}-{hi:.2f} ms ({hi / lo:.2f}x)")
    return [f"Latency at {t} thread(s) is noisy: {'; '.join(items)} (p90/p10 over {limit:g}). The variants were "
            "timed interleaved, so their ratios hold better than the absolute times; rerun on a quiet machine "
            "(more --latency-runs) before quoting them." for t, items in by_threads.items()]
