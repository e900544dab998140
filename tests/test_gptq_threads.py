"""GPTQ runs its BLAS work on one thread (spin-waiting OpenBLAS workers tripled its time on a
shared 2-core machine), gives the same integers either way, and leaves the thread count as it was."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.algorithms.gptq import gptq_round, one_blas_thread

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_one_blas_thread_inside_and_restored_after():
    np.ones((64, 64)) @ np.ones((64, 64))  # numpy's BLAS is loaded
    before = _blas_threads()
    with one_blas_thread():
        assert _blas_threads() and all(n == 1 for n in _blas_threads())
    assert _blas_threads() == before


def test_gptq_integers_do_not_depend_on_the_blas_thread_count():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(1, 16, 96)).astype(np.float32)
    x = rng.normal(size=(512, 96))
    h = (x.T @ x / 512)[None]
    scale = np.broadcast_to(np.abs(w).max(axis=2, keepdims=True) / 7, w.shape).astype(np.float32)
    zero = np.zeros_like(w)
    free = gptq_round(w, h, scale, zero, -8, 7)
    with one_blas_thread():
        one = gptq_round(w, h, scale, zero, -8, 7)
    assert np.mean(free == one) > 0.99  # summation order may move a rounding tie, no more
