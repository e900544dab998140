"""Memory-saving rewrites compute the same floats as the straightforward forms they replace, and
streaming keeps each ONNX Runtime call's outputs within its budget."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from lowbit.algorithms import _layer_data as ld
from lowbit.algorithms.gptq import Hessian, _inverse_cholesky, gptq_round
from lowbit.data import as_feeds
from lowbit.onnx.session import session
from lowbit.load.prepare import prepare
from lowbit.load.model import load_model


def _rows(seed: int, n: int = 300, g: int = 2, k: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, g, k)).astype(np.float32)
    x[:, :, 3] = 0.0  # a dead input
    x[:7, :, 5] = -0.0
    return x


def test_hessian_sum_matches_float64_widening() -> None:
    h = Hessian(np.zeros((2, 24, 24)))
    ref = np.zeros((2, 24, 24))
    for seed in range(3):
        rows = _rows(seed)
        h.add(rows)
        r = np.ascontiguousarray(rows.transpose(1, 0, 2))
        ref += np.matmul(r.transpose(0, 2, 1), r).astype(np.float64)
    assert np.array_equal(h.total, ref)
    assert np.array_equal(h.value(), 2.0 * ref / h.count)
    value = h.value()
    assert np.array_equal(h.take(), value)  # in place, the same floats
    assert h.total.size == 0


def test_inverse_cholesky_matches_identity_formula() -> None:
    h = Hessian(np.zeros((2, 24, 24)))
    h.add(_rows(0))
    eye = np.eye(24)
    Hd = h.value() + 0.5 * eye  # positive definite despite the dead input
    for percdamp in (0.01, 0.1):
        mean_diag = np.einsum("gii->gi", Hd).mean(axis=1)[:, None, None]
        ref = np.linalg.inv(Hd + percdamp * mean_diag * eye)
        owned = [Hd.copy()]
        got = _inverse_cholesky(owned, percdamp)
        assert owned == []  # taken over
        assert np.allclose(np.tril(got, -1), 0.0)  # upper triangular
        np.testing.assert_allclose(np.matmul(got.transpose(0, 2, 1), got), ref, rtol=1e-9, atol=1e-12)


def test_gptq_round_leaves_the_callers_hessian_alone() -> None:
    rng = np.random.default_rng(0)
    h = Hessian(np.zeros((1, 24, 24)))
    h.add(_rows(1, g=1))
    value = h.value()
    before = value.copy()
    w = (0.1 * rng.normal(size=(1, 8, 24))).astype(np.float32)
    s = np.full_like(w, 0.02)
    z = np.zeros_like(w)
    a = gptq_round(w, value, s, z, -7, 7, block_size=8)
    assert np.array_equal(value, before)
    assert np.array_equal(a, gptq_round(w, value, s, z, -7, 7, block_size=8))


def test_stream_keeps_each_call_within_budget(small_model_path, calib_arrays, monkeypatch) -> None:
    prepared = prepare(load_model(str(small_model_path)))
    model = prepared.proto
    targets = [n.output[0] for n in model.graph.node if n.op_type == "Conv"]
    feeds = as_feeds(calib_arrays, prepared.inputs)

    def run(budget_mb: float) -> tuple[list[int], list[np.ndarray]]:
        monkeypatch.setattr(ld, "STREAM_MB", budget_mb)
        sizes, parts = [], []
        for start, values in ld.stream(model, targets, feeds):
            assert start == sum(sizes)
            sizes.append(values[0].shape[0])
            parts.append(np.concatenate([v.reshape(v.shape[0], -1) for v in values], axis=1))
        return sizes, parts

    sizes_all, all_merged = run(1e9)
    assert sizes_all == [1, ld.MERGED_BATCH if len(calib_arrays) > ld.MERGED_BATCH else len(calib_arrays) - 1]
    per_sample = all_merged[0].nbytes
    sizes, parts = run(3.5 * per_sample / 2**20)  # three samples' values fit
    assert sizes[0] == 1 and max(sizes) == 3 and sum(sizes) == len(calib_arrays)
    assert np.array_equal(np.concatenate(parts), np.concatenate(all_merged))
    sizes, _ = run(1e-6)  # never below one batch
    assert sizes == [1] * len(calib_arrays)


def test_stream_merges_fewer_samples_where_the_models_values_are_large(small_model_path, calib_arrays,
                                                                       monkeypatch) -> None:
    prepared = prepare(load_model(str(small_model_path)))
    model = prepared.proto
    targets = [n.output[0] for n in model.graph.node if n.op_type == "Conv"][:1]
    feeds = as_feeds(calib_arrays, prepared.inputs)
    largest = ld.largest_value_bytes(ld.prefix_model(model, targets))
    assert largest > 1  # the prepared model's inferred shapes are known

    def run(work_mb: float) -> tuple[list[int], np.ndarray]:
        monkeypatch.setattr(ld, "WORK_MB", work_mb)
        sizes, parts = [], []
        for _, values in ld.stream(model, targets, feeds):
            sizes.append(values[0].shape[0])
            parts.append(values[0].copy())
        return sizes, np.concatenate(parts)

    _, merged_all = run(1e9)
    sizes, values = run(2.5 * largest / 2**20)  # two samples' largest value fit
    assert sizes[0] == 1 and max(sizes) == 2 and sum(sizes) == len(calib_arrays)
    assert np.array_equal(values, merged_all)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc are Linux's")
def test_release_free_memory_hands_freed_heap_pages_back() -> None:
    """The situation release_free_memory exists for: after a large free raises glibc's mmap
    threshold, 1 MB buffers come from the heap; freed below a live allocation, their ~200 MB stay
    resident until trimmed. Measured here: 294 MB resident before, 93 MB after."""
    code = """
import numpy as np
from lowbit.target.memory import release_free_memory
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
big = np.ones(1 << 21); del big  # a 16 MB free: glibc now serves buffers under 16 MB from the heap
bufs = [np.ones(1 << 17) for _ in range(200)]  # 200 x 1 MB on the heap
pin = np.ones(1 << 17)  # live, above them: the heap's top cannot shrink past it
del bufs
before = rss(); release_free_memory(); after = rss()
release_free_memory()  # harmless when there is nothing to give back
print(before, after)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = map(float, out.split())
    assert before - after > 100, (before, after)


def test_session_without_arena_computes_the_same(small_model_path, calib_arrays) -> None:
    model = onnx.load(str(small_model_path))
    x = np.stack(calib_arrays[:4])
    name = model.graph.input[0].name
    a = session(model).run(None, {name: x})[0]
    b = session(model, arena=False).run(None, {name: x})[0]
    assert np.array_equal(a, b)


def test_gptq_in_hessian_chunks_rounds_the_same_without_torch(small_model_path, calib_arrays) -> None:
    """GPTQ rounds in chunks of layers (max_hessian_mb, what bounds its memory) without changing the
    result, and does not import torch (whose import alone costs 150-200 MB)."""
    code = f"""
import sys, numpy as np
import lowbit
from lowbit.algorithms import GPTQ
from lowbit.plan.algorithm import AlgorithmContext
from lowbit.api import calibrate_plan
from lowbit.presets import preset
from lowbit.data import as_feeds
from lowbit.load.model import load_model
from lowbit.load.prepare import prepare
from onnx import numpy_helper
prepared = prepare(load_model({str(small_model_path)!r}))
rng = np.random.default_rng(0)
shape = [d if isinstance(d, int) and d > 0 else 1 for d in prepared.inputs[0].shape]
calib = as_feeds([rng.normal(size=shape).astype(np.float32) for _ in range(8)], prepared.inputs)
cfg = preset("int8").with_(algorithms=())
model, plan, _ = calibrate_plan(prepared, cfg, calib)
ctx = AlgorithmContext(calib, cfg, lambda *a: None, 0)
one, _ = GPTQ().apply(model, plan, ctx)
many, _ = GPTQ(max_hessian_mb=1e-9).apply(model, plan, ctx)
a = {{t.name: numpy_helper.to_array(t) for t in one.graph.initializer}}
b = {{t.name: numpy_helper.to_array(t) for t in many.graph.initializer}}
assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
assert "torch" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_in_place_permutation_and_inverse_factor_match_the_copying_forms() -> None:
    from lowbit.algorithms import gptq
    rng = np.random.default_rng(3)
    for k in (1, 5, 64):
        a = rng.normal(size=(k, k))
        p = rng.permutation(k)
        ref = a[np.ix_(p, p)]
        gptq._permute(a, p)
        assert np.array_equal(a, ref)
    saved = gptq.BLOCK
    gptq.BLOCK = 16  # several blocks, and a retry with more dampening after a failed factorisation
    try:
        for k in (40, 48):
            x = rng.normal(size=(k // 2, k))
            h = x.T @ x / k
            h -= 0.05 * np.diag(h).mean() * np.eye(k)  # indefinite until dampened by 10% of its mean diagonal
            ref = np.linalg.inv(h + 0.1 * np.diag(h).mean() * np.eye(k))
            u = gptq._inverse_cholesky([h[None].copy()], 0.01)[0]
            assert np.allclose(np.tril(u, -1), 0.0)
            np.testing.assert_allclose(u.T @ u, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())
    finally:
        gptq.BLOCK = saved
