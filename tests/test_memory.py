"""Memory-saving rewrites compute the same floats as the straightforward forms they replace, and
streaming keeps each ONNX Runtime call's outputs within its budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from lowbit.algorithms import _layer_data as ld
from lowbit.algorithms.gptq import Hessian, _inverse_cholesky, gptq_round
from lowbit.data import as_feeds
from lowbit.observe import session
from lowbit.prepare import prepare
from lowbit.load import load_model


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


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
        r = torch.from_numpy(np.ascontiguousarray(rows.transpose(1, 0, 2)))
        ref += torch.bmm(r.transpose(1, 2), r).double().numpy()
    assert np.array_equal(h.total, ref)
    assert np.array_equal(h.value(), 2.0 * ref / h.count)


def test_inverse_cholesky_matches_identity_formula() -> None:
    h = Hessian(np.zeros((2, 24, 24)))
    h.add(_rows(0))
    H = torch.from_numpy(h.value())
    eye = torch.eye(24, dtype=H.dtype)
    Hd = H + 0.5 * eye  # positive definite despite the dead input
    for percdamp in (0.01, 0.1):
        mean_diag = torch.diagonal(Hd, dim1=1, dim2=2).mean(dim=1).view(-1, 1, 1)
        L, _ = torch.linalg.cholesky_ex(Hd + percdamp * mean_diag * eye)
        ref, _ = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
        got = _inverse_cholesky(Hd.clone(), percdamp)
        assert torch.equal(got, ref)


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


def test_session_without_arena_computes_the_same(small_model_path, calib_arrays) -> None:
    model = onnx.load(str(small_model_path))
    x = np.stack(calib_arrays[:4])
    name = model.graph.input[0].name
    a = session(model).run(None, {name: x})[0]
    b = session(model, arena=False).run(None, {name: x})[0]
    assert np.array_equal(a, b)
