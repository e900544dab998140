"""The process's peak resident memory over one call (what a quantize report states), and handing
freed heap memory back so that it does not add to a later peak."""

from __future__ import annotations

import ctypes
import functools
import resource


def reset_peak_rss() -> None:
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM), so the peak
    reported is this call's, not the process's lifetime maximum."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; absent on musl, macOS and Windows
    except (AttributeError, OSError):
        return None


def release_free_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc `malloc_trim`; elsewhere nothing).

    Why: once a large numpy or ONNX Runtime buffer is freed, glibc raises its mmap threshold (up
    to 32 MB), so later buffers of that size come from the heap, and freeing them keeps their pages
    resident for the process's life. Called between stages (a new session, a GPTQ layer done), it
    keeps one stage's freed working set from adding to the next stage's peak (ResNet-18 int8: the
    heap held ~200 MB of freed buffers when GPTQ's largest Hessian was made)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
