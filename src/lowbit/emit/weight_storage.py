"""Weight-only INT8 storage ('w8'): a float layer's weight kept in the file as INT8 integers and
scales, turned back into the FP32 weight by Cast / Mul / Reshape nodes whose inputs are all
constant, so ONNX Runtime folds them once at load and the layer runs FP32's own kernel.

One scale per group of `W8_GROUP` weights along the reduction axis (per output channel where the
layout does not divide into groups); depthwise kernels are rounded so that their sums stay exact to
half a step (`keep_kernel_sums`). No integer kernel reads these integers, so the grid is free:
on MobileNetV2's projection convolutions groups of 32 keep the network's output 3-5 dB closer to
FP32 than one scale per channel, for 1/16 more bytes (FP16 scales). DequantizeLinear is not used
because ONNX Runtime does not fold it: it would run on every call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lowbit.onnx.names import Names

W8_GROUP = 32
INTEGERS, SCALE = "_w8", "_s"  # as lowbit.emit.qdq names its constants
_FP16_MIN_NORMAL, _FP16_MAX = 2.0 ** -14, 65504.0


@dataclass
class StoredInt8:
    """A weight as integers and scales in a layout where `ints * scale` broadcasts (`blocked`)."""

    ints: np.ndarray   # int8, shape `blocked`
    scale: np.ndarray  # float16 (float32 where a scale falls outside FP16's normal range)
    shape: tuple[int, ...]

    def values(self) -> np.ndarray:
        """Exactly what ONNX Runtime computes when it folds the Cast / Mul / Reshape at load."""
        return (self.ints.astype(np.float32) * self.scale.astype(np.float32)).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return int(self.ints.size + self.scale.nbytes)


def w8_layout(shape: tuple[int, ...], axis: int, group: int = W8_GROUP) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(blocked shape, scale shape) of a weight whose output channels run along `axis`: groups along
    the reduction axis for (C, ...) weights (Conv, Gemm with transB) and (K, N) MatMul weights."""
    shape = tuple(int(d) for d in shape)
    if axis == 0 and len(shape) >= 2:
        c, k = shape[0], int(np.prod(shape[1:]))
        if k % group == 0 and k > group:
            return (c, k // group, group), (c, k // group, 1)
    elif axis == 1 and len(shape) == 2:
        k, n = shape
        if k % group == 0 and k > group:
            return (k // group, group, n), (k // group, 1, n)
    return shape, tuple(-1 if d == axis else 1 for d in range(len(shape)))


def weight_only_int8(w: np.ndarray, axis: int, group: int = W8_GROUP) -> StoredInt8:
    """Symmetric INT8 over the full [-127, 127] (no u8 x s8 kernel reads it, so no 7-bit limit),
    one scale per group along the reduction axis, or per output channel."""
    w = np.asarray(w, np.float32)
    blocked, scale_shape = w8_layout(w.shape, axis, group)
    wb = w.reshape(blocked)
    reduce = tuple(d for d, size in enumerate(scale_shape) if size == 1)
    amax = np.max(np.abs(wb), axis=reduce, keepdims=True) if reduce else np.abs(wb)
    # a group of subnormal weights (decayed to ~1e-44 in trained models: PP-OCRv4 rec's squeeze-excitation
    # convs) has amax / 127 == 0 in float32: scale 1 stores it as the zeros it nearly is
    raw = (amax / np.float32(127.0)).astype(np.float32)
    scale = np.where(raw > 0, raw, 1.0).astype(np.float32)
    live = scale[raw > 0]
    if live.size == 0 or (live.min() >= _FP16_MIN_NORMAL and live.max() <= _FP16_MAX):
        scale = scale.astype(np.float16)  # half the scale bytes; the grid is defined by these values
    step = np.broadcast_to(scale.astype(np.float32), wb.shape)
    exact = wb / step
    ints = np.clip(np.round(exact), -127, 127)
    if axis == 0 and w.ndim >= 3 and w.shape[1] == 1 and int(np.prod(w.shape[2:])) > 1:  # depthwise
        ints = keep_kernel_sums(exact.reshape(w.shape), ints.reshape(w.shape), step.reshape(w.shape)).reshape(wb.shape)
    return StoredInt8(ints.astype(np.int8), scale.reshape(np.shape(amax)), tuple(w.shape))


def keep_kernel_sums(exact: np.ndarray, ints: np.ndarray, step: np.ndarray) -> np.ndarray:
    """`ints` (rounded `exact`, in units of `step`) re-rounded so that each spatial kernel's sum
    (its response to a constant input, per output and input channel) is the float kernel's to within
    half a step: a weight rounded the other way where its fraction is nearest one half.

    Why: feature maps are locally smooth, so a kernel mostly sees its input's local mean; a
    high-pass kernel (sum near 0, amplified by a folded batch norm) whose rounding errors add up
    turns that mean into a large error. MobileNetV2, logits vs FP32 on 300 photo crops: the
    int8-dynamic preset (these groups) 28.7 -> 30.2 dB, KL -22%; with one scale per output channel
    and only the depthwise kernels' sums kept, 18.5 -> 24.5 dB (its first depthwise layer alone
    22.1 -> 34.4 dB). Each flip costs at most one step on one weight; no calibration data is needed.
    Applied to depthwise kernels only (one input channel per output channel): a full convolution
    sums many kernels whose errors partly cancel, and keeping every kernel's sum there cost the
    zoo's YOLOv8n int8-dynamic F1 1.000 -> 0.987 and ddddocr's strings 0.947 -> 0.933."""
    o, i = exact.shape[:2]
    q, k, s = (a.reshape(o * i, -1).astype(np.float64) for a in (exact, ints, step))  # copies
    rows = np.arange(len(k))
    error = ((k - q) * s).sum(1)  # each kernel's sum error, in weight units
    for _ in range(q.shape[1]):
        up = error < 0  # the sum is too small: round a weight up
        frac = np.where(up[:, None], q - k, k - q)  # how far each weight sits from the other grid point
        movable = (frac > 0) & np.where(up[:, None], k < 127, k > -127)
        pick = np.argmax(np.where(movable, frac, -np.inf), 1)
        delta = np.where(up, 1.0, -1.0)
        better = movable[rows, pick] & (np.abs(error + delta * s[rows, pick]) < np.abs(error))
        if not better.any():
            break
        k[rows[better], pick[better]] += delta[better]
        error[better] += delta[better] * s[rows[better], pick[better]]
    return k.reshape(ints.shape)


_MADE = (INTEGERS, SCALE, "_f", "_cast", f"{SCALE}_f", f"{SCALE}_cast", "_blocks", "_scale", "_shape", "_reshape")


def stored_int8_nodes(name: str, stored: StoredInt8, names: Names | None = None
                      ) -> tuple[list[TensorProto], list[onnx.NodeProto]]:
    """Initializers and nodes that compute float tensor `name` from `stored`, all foldable at load.
    Their names are `name` + a suffix unless `names` (the model's) already holds one of them."""
    p = names.fresh_prefix(name, _MADE) if names is not None else name
    inits = [numpy_helper.from_array(stored.ints, f"{p}{INTEGERS}"),
             numpy_helper.from_array(stored.scale, f"{p}{SCALE}")]
    nodes = [helper.make_node("Cast", [f"{p}{INTEGERS}"], [f"{p}_f"], name=f"{p}_cast", to=TensorProto.FLOAT)]
    scale = f"{p}{SCALE}"
    if stored.scale.dtype == np.float16:
        nodes.append(helper.make_node("Cast", [scale], [f"{scale}_f"], name=f"{scale}_cast", to=TensorProto.FLOAT))
        scale = f"{scale}_f"
    blocked = stored.ints.shape != stored.shape
    product = f"{p}_blocks" if blocked else name
    nodes.append(helper.make_node("Mul", [f"{p}_f", scale], [product], name=f"{p}_scale"))
    if blocked:
        inits.append(numpy_helper.from_array(np.asarray(stored.shape, np.int64), f"{p}_shape"))
        nodes.append(helper.make_node("Reshape", [product, f"{p}_shape"], [name], name=f"{p}_reshape"))
    return inits, nodes
