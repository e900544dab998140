"""Scale / zero-point choice and (de)quantization, bit-for-bit as ONNX QuantizeLinear does it:
q = saturate(round_half_to_even(x / scale) + zero_point), computed in float32."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.core.dtypes import QDtype
from lowbit.core.granularity import Granularity, PerChannel, PerTensor

# An all-zero or constant channel would give scale 0 and NaN after dequantize.
MIN_SCALE = np.float32(1e-12)


def reduce_minmax(x: np.ndarray, granularity: Granularity) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of `x` at `granularity`: shapes () per tensor, (C,) per channel, and
    x.shape with the axis cut to ceil(n / size) per group."""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        raise ValueError("cannot take the range of an empty tensor")
    if isinstance(granularity, PerTensor):
        return np.asarray(x.min()), np.asarray(x.max())
    axis = granularity.axis % x.ndim
    if isinstance(granularity, PerChannel):
        moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        return moved.min(axis=1), moved.max(axis=1)
    blocks = _blocked(x, axis, granularity.size)  # (..., nblocks, size, ...)
    return np.nanmin(blocks, axis=axis + 1), np.nanmax(blocks, axis=axis + 1)


def _blocked(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """x with `axis` split into (nblocks, size); a short last block is padded with NaN."""
    n = x.shape[axis]
    nblocks = -(-n // size)
    pad = nblocks * size - n
    if pad:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, pad)
        x = np.pad(x, widths, constant_values=np.nan)
    return x.reshape(x.shape[:axis] + (nblocks, size) + x.shape[axis + 1:])


def choose_qparams(
    lo: np.ndarray | float,
    hi: np.ndarray | float,
    dtype: QDtype,
    symmetric: bool,
    narrow: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point that map [lo, hi] onto dtype's grid with 0.0 exactly representable.

    The range is first widened to include 0. Symmetric grids put zero at the grid's middle
    (0 for signed, 2**(bits-1) for unsigned); asymmetric grids use the whole grid.
    """
    lo = np.minimum(np.asarray(lo, dtype=np.float32), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float32), 0.0)
    qmin, qmax = dtype.bounds(narrow)
    if symmetric:
        amax = np.maximum(-lo, hi)
        half = (qmax - qmin) / 2.0  # 127 for narrow int8, 127.5 for full int8 / uint8
        scale = (amax / np.float32(np.floor(half))).astype(np.float32)
        zp = np.full(scale.shape, 0 if dtype.signed else (qmin + qmax + 1) // 2, dtype=np.int64)
    else:
        scale = ((hi - lo) / np.float32(qmax - qmin)).astype(np.float32)
        safe = np.maximum(scale, MIN_SCALE)
        zp = np.clip(np.round(qmin - lo / safe), qmin, qmax).astype(np.int64)
    scale = np.maximum(scale, MIN_SCALE).astype(np.float32)
    return scale, zp


def _expand(p: np.ndarray, shape: tuple[int, ...], granularity: Granularity) -> np.ndarray:
    """Reshape / repeat per-channel or per-group parameters so they broadcast against `shape`."""
    p = np.asarray(p)
    if isinstance(granularity, PerTensor):
        return p.reshape(())
    axis = granularity.axis % len(shape)
    if isinstance(granularity, PerChannel):
        view = [1] * len(shape)
        view[axis] = -1
        return p.reshape(view)
    return np.repeat(p, granularity.size, axis=axis).take(range(shape[axis]), axis=axis)


def quantize(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    dtype: QDtype,
    granularity: Granularity = PerTensor(),
    narrow: bool = False,
) -> np.ndarray:
    """Integers on dtype's grid, as ONNX QuantizeLinear computes them (float32 divide,
    round half to even, saturate). Returned in dtype's numpy storage type."""
    x = np.asarray(x, dtype=np.float32)
    s = _expand(np.asarray(scale, dtype=np.float32), x.shape, granularity)
    z = _expand(np.asarray(zero_point, dtype=np.float32), x.shape, granularity)
    qmin, qmax = dtype.bounds(narrow)
    q = np.clip(np.rint(x / s) + z, qmin, qmax)
    return q.astype(dtype.storage)


def dequantize(
    q: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    granularity: Granularity = PerTensor(),
) -> np.ndarray:
    """Float32 values of grid integers: (q - zero_point) * scale."""
    q = np.asarray(q)
    s = _expand(np.asarray(scale, dtype=np.float32), q.shape, granularity)
    z = _expand(np.asarray(zero_point, dtype=np.int64), q.shape, granularity)
    return ((q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)


def fake_quantize(x, scale, zero_point, dtype, granularity=PerTensor(), narrow=False) -> np.ndarray:
    """dequantize(quantize(x)): the float value x takes after a round trip through the grid."""
    q = quantize(x, scale, zero_point, dtype, granularity, narrow)
    return dequantize(q, scale, zero_point, granularity)


@dataclass(frozen=True)
class QParams:
    """A complete quantizer: grid, granularity and the parameters that map floats onto it."""

    dtype: QDtype
    granularity: Granularity
    scale: np.ndarray
    zero_point: np.ndarray
    narrow: bool = False

    @classmethod
    def from_range(cls, lo, hi, dtype: QDtype, granularity: Granularity, symmetric: bool,
                   narrow: bool = False) -> "QParams":
        scale, zp = choose_qparams(lo, hi, dtype, symmetric, narrow)
        return cls(dtype, granularity, scale, zp, narrow)

    @classmethod
    def for_tensor(cls, x: np.ndarray, dtype: QDtype, granularity: Granularity, symmetric: bool,
                   narrow: bool = False) -> "QParams":
        lo, hi = reduce_minmax(x, granularity)
        return cls.from_range(lo, hi, dtype, granularity, symmetric, narrow)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        return quantize(x, self.scale, self.zero_point, self.dtype, self.granularity, self.narrow)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return dequantize(q, self.scale, self.zero_point, self.granularity)

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        return self.dequantize(self.quantize(x))

    @property
    def representable_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The float range [lo, hi] the grid covers, per scale."""
        qmin, qmax = self.dtype.bounds(self.narrow)
        return (qmin - self.zero_point) * self.scale, (qmax - self.zero_point) * self.scale
