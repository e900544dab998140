"""Numerical contracts of lowbit.core: the grid maths must be exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lowbit.core import (PerChannel, PerGroup, PerTensor, QParams, choose_qparams, dequantize, dtype_by_name,
                         fake_quantize, int4, int8, quantize, reduce_minmax, uint8)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@pytest.mark.parametrize("dtype,symmetric", [(int8, True), (uint8, False), (int8, False), (uint8, True), (int4, True)])
def test_grid_identity(dtype, symmetric):
    rng = np.random.default_rng(0)
    scale, zp = choose_qparams(-3.0, 5.0, dtype, symmetric)
    qmin, qmax = dtype.bounds()
    q = rng.integers(qmin, qmax + 1, size=1000)
    x = dequantize(q, scale, zp)  # values exactly on the grid
    assert np.array_equal(quantize(x, scale, zp, dtype), q.astype(dtype.storage))
    assert np.array_equal(fake_quantize(x, scale, zp, dtype), x)


@given(lo=finite, hi=finite, symmetric=st.booleans(), name=st.sampled_from(["int8", "uint8", "int4", "int7"]))
def test_zero_is_exactly_representable(lo, hi, symmetric, name):
    dtype = dtype_by_name(name)
    lo, hi = min(lo, hi), max(lo, hi)
    scale, zp = choose_qparams(lo, hi, dtype, symmetric, narrow=symmetric and dtype.signed)
    assert scale > 0
    assert dequantize(quantize(np.float32(0.0), scale, zp, dtype), scale, zp) == 0.0


@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6), elements=finite),
       symmetric=st.booleans())
@settings(max_examples=200)
def test_range_covered_within_half_step(x, symmetric):
    """Every value inside the calibrated range comes back within half a step."""
    q = QParams.for_tensor(x, uint8 if not symmetric else int8, PerTensor(), symmetric, narrow=symmetric)
    err = np.abs(q.fake_quantize(x) - x)
    assert np.all(err <= q.scale * 0.5 + 1e-6 * np.abs(x).max(initial=1))


def test_clamping_saturates_to_grid_ends():
    scale, zp = choose_qparams(0.0, 1.0, uint8, symmetric=False)
    q = quantize(np.array([-5.0, 0.5, 7.0], np.float32), scale, zp, uint8)
    assert q[0] == 0 and q[2] == 255
    assert q.dtype == np.uint8


def test_round_half_to_even_like_onnx():
    q = quantize(np.array([0.5, 1.5, 2.5, -0.5], np.float32), np.float32(1.0), np.int64(0), int8)
    assert q.tolist() == [0, 2, 2, 0]


@given(shape=hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=5), axis=st.integers(0, 1))
def test_per_channel_shapes(shape, axis):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    q = QParams.for_tensor(x, int8, PerChannel(axis), symmetric=True, narrow=True)
    assert q.scale.shape == (shape[axis],)
    assert q.quantize(x).shape == x.shape
    # each channel's own maximum maps to +-127 exactly
    amax = np.moveaxis(np.abs(x), axis, 0).reshape(shape[axis], -1).max(axis=1)
    nonzero = amax > 0
    qmax = np.moveaxis(np.abs(q.quantize(x).astype(int)), axis, 0).reshape(shape[axis], -1).max(axis=1)
    assert np.all(qmax[nonzero] == 127)


def test_degenerate_channels_do_not_produce_nan():
    x = np.zeros((3, 4), np.float32)
    x[1] = 2.5  # constant channel
    q = QParams.for_tensor(x, int8, PerChannel(0), symmetric=True, narrow=True)
    y = q.fake_quantize(x)
    assert np.all(np.isfinite(y)) and np.allclose(y, x)


def test_per_group_blocks():
    x = np.arange(10, dtype=np.float32).reshape(1, 10) - 5
    lo, hi = reduce_minmax(x, PerGroup(axis=1, size=4))
    assert lo.shape == (1, 3) and hi.tolist() == [[-2.0, 2.0, 4.0]]
    q = QParams.for_tensor(x, int4, PerGroup(axis=1, size=4), symmetric=True, narrow=True)
    assert np.abs(q.fake_quantize(x) - x).max() <= q.scale.max() / 2 + 1e-6


def test_narrow_int8_bounds_and_int7():
    assert int8.bounds(narrow=True) == (-127, 127)
    assert dtype_by_name("int7").bounds(narrow=True) == (-63, 63)
    with pytest.raises(ValueError):
        dtype_by_name("int99")
