"""ONNX operators as torch functions: enough of ONNX to train the float graph a plan describes.

QAT trains the very graph the PTQ plan was made for (the prepared ONNX model, BatchNorm already
folded), so that every TensorPlan names a tensor of the trained module and the result leaves
through the same plan -> emit path. These are the operators of image classifiers, MLPs,
transformer encoders (layer norms, attention masks and the shape arithmetic exporters emit) and
recurrent models (LSTM, padding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from onnx import numpy_helper

from lowbit.errors import ModelError

OpFn = Callable[[Sequence[torch.Tensor | None], dict], torch.Tensor]
OPS: dict[str, OpFn] = {}


def op(*names: str):
    def deco(fn: OpFn) -> OpFn:
        for n in names:
            OPS[n] = fn
        return fn
    return deco


def _pads(a: dict, spatial: int) -> tuple[list[int] | None, list[int]]:
    """(explicit F.pad widths or None, symmetric padding) from ONNX pads [b1, b2, .., e1, e2, ..]."""
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise ModelError("auto_pad SAME_UPPER / SAME_LOWER is not supported in QAT; re-export with explicit pads.")
    pads = list(a.get("pads", [0] * 2 * spatial))
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return None, begin
    widths: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        widths += [b, e]
    return widths, [0] * spatial


@op("Conv")
def _conv(x, a):
    inp, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    spatial = w.dim() - 2
    explicit, pad = _pads(a, spatial)
    if explicit is not None:
        inp = F.pad(inp, explicit)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return fn(inp, w, b, stride=list(a.get("strides", [1] * spatial)), padding=pad,
              dilation=list(a.get("dilations", [1] * spatial)), groups=int(a.get("group", 1)))


@op("Gemm")
def _gemm(x, a):
    A = x[0].t() if a.get("transA", 0) else x[0]
    B = x[1].t() if a.get("transB", 0) else x[1]
    y = A @ B
    if a.get("alpha", 1.0) != 1.0:
        y = y * a["alpha"]
    if len(x) > 2 and x[2] is not None:
        y = y + x[2] * a.get("beta", 1.0)
    return y


@op("MaxPool", "AveragePool")
def _pool(x, a, kind=None):
    k = list(a["kernel_shape"])
    spatial = len(k)
    explicit, pad = _pads(a, spatial)
    inp = x[0]
    strides = list(a.get("strides", [1] * spatial))
    ceil = bool(a.get("ceil_mode", 0))
    if "dilations" in a and any(d != 1 for d in a["dilations"]):
        raise ModelError("dilated pooling is not supported in QAT")
    if spatial != 2:
        raise ModelError(f"{spatial}-d pooling is not supported in QAT (2-d only)")
    if a.get("_op") == "MaxPool":
        if explicit is not None:
            inp = F.pad(inp, explicit, value=float("-inf"))
        return F.max_pool2d(inp, k, strides, pad, ceil_mode=ceil)
    if explicit is not None:
        raise ModelError("asymmetric average-pool padding is not supported in QAT")
    return F.avg_pool2d(inp, k, strides, pad, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))


@op("GlobalAveragePool")
def _gap(x, a):
    return x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)


@op("GlobalMaxPool")
def _gmp(x, a):
    return x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True)


@op("Flatten")
def _flatten(x, a):
    axis = int(a.get("axis", 1))
    axis = axis + x[0].dim() if axis < 0 else axis  # in [0, rank]: a 1-d input flattens to (n, 1)
    rows = 1
    for d in x[0].shape[:axis]:
        rows *= int(d)
    return x[0].reshape(rows, -1)


@op("Reshape")
def _reshape(x, a):
    shape = [int(s) for s in x[1].tolist()]
    if not a.get("allowzero", 0):
        shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x[0].reshape(shape)


@op("Transpose")
def _transpose(x, a):
    return x[0].permute(*a.get("perm", list(reversed(range(x[0].dim())))))


@op("Squeeze")
def _squeeze(x, a):
    axes = x[1].tolist() if len(x) > 1 and x[1] is not None else a.get("axes")
    if axes is None:
        return x[0].squeeze()
    return x[0].squeeze(tuple(int(i) for i in axes))


@op("Unsqueeze")
def _unsqueeze(x, a):
    y = x[0]
    axes = x[1].tolist() if len(x) > 1 and x[1] is not None else a["axes"]
    for ax in sorted(int(i) % (y.dim() + len(axes)) for i in axes):
        y = y.unsqueeze(ax)
    return y


@op("Concat")
def _concat(x, a):
    return torch.cat(list(x), dim=int(a["axis"]))


@op("Clip")
def _clip(x, a):
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    return torch.clamp(x[0], None if lo is None else float(lo), None if hi is None else float(hi))


@op("BatchNormalization")
def _bn(x, a):  # inference form: running statistics (BN left unfused by the exporter)
    return F.batch_norm(x[0], x[3], x[4], x[1], x[2], training=False, eps=float(a.get("epsilon", 1e-5)))


_SIMPLE: dict[str, Callable[..., torch.Tensor]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "MatMul": torch.matmul,
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Identity": lambda t: t,
    "HardSwish": F.hardswish, "Erf": torch.erf, "Pow": torch.pow, "Neg": torch.neg,
}


@op("Sqrt")
def _sqrt(x, a):
    """sqrt with a zero gradient at 0 instead of an infinite one: a spectrogram's magnitude of silent
    (zero) frames would otherwise turn every gradient into NaN."""
    t = x[0]
    positive = t > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, t, torch.ones_like(t))), torch.zeros_like(t))
for _name, _fn in _SIMPLE.items():
    OPS[_name] = (lambda fn: lambda x, a: fn(*x))(_fn)
OPS["LeakyRelu"] = lambda x, a: F.leaky_relu(x[0], float(a.get("alpha", 0.01)))
OPS["HardSigmoid"] = lambda x, a: torch.clamp(x[0] * float(a.get("alpha", 0.2)) + float(a.get("beta", 0.5)), 0, 1)
OPS["Softmax"] = lambda x, a: torch.softmax(x[0], dim=int(a.get("axis", -1)))
OPS["ReduceMean"] = lambda x, a: x[0].mean(dim=tuple(a["axes"]), keepdim=bool(a.get("keepdims", 1)))


# --- transformers (MiniLM and kin): layer norms, attention masks, shape arithmetic ------------------
_ONNX_TORCH_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
                      9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


@op("LayerNormalization")
def _layer_norm(x, a):
    axis = int(a.get("axis", -1)) % x[0].dim()
    shape = tuple(x[0].shape[axis:])
    w = x[1] if len(x) > 1 else None
    b = x[2] if len(x) > 2 else None
    return F.layer_norm(x[0], shape, None if w is None else w.expand(shape), None if b is None else b.expand(shape),
                        float(a.get("epsilon", 1e-5)))


@op("Shape")
def _shape(x, a):
    dims = list(x[0].shape)
    start, end = int(a.get("start", 0)), a.get("end")
    return torch.tensor(dims[start:None if end is None else int(end)], dtype=torch.int64)


@op("Gather")
def _gather(x, a):
    data, idx = x[0], x[1].long()
    axis = int(a.get("axis", 0)) % data.dim()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    if idx.numel() and int(idx.max()) >= data.shape[axis]:
        raise ModelError(f"Gather index {int(idx.max())} out of range for axis {axis} of shape {tuple(data.shape)}")
    out = torch.index_select(data, axis, idx.reshape(-1))
    return out.reshape(tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1:]))


@op("Slice")
def _slice(x, a):
    data = x[0]
    starts, ends = x[1].tolist(), x[2].tolist()
    axes = x[3].tolist() if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = x[4].tolist() if len(x) > 4 and x[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise ModelError("Slice with negative steps is not supported in QAT")
        n = data.shape[int(ax)]
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        index[int(ax)] = slice(s, e, int(st))
    return data[tuple(index)]


@op("Cast")
def _cast(x, a):
    to = int(a["to"])
    if to not in _ONNX_TORCH_DTYPES:
        raise ModelError(f"Cast to ONNX type {to} is not supported in QAT")
    return x[0].to(_ONNX_TORCH_DTYPES[to])


@op("Range")
def _range(x, a):
    start, limit, delta = (t.item() for t in x[:3])
    return torch.arange(start, limit, delta, dtype=x[0].dtype)


@op("Expand")
def _expand(x, a):
    shape = torch.broadcast_shapes(tuple(x[0].shape), tuple(int(s) for s in x[1].tolist()))
    return x[0].expand(shape)


@op("Div")
def _div(x, a):  # integer Div truncates in ONNX (shape arithmetic: hidden // heads)
    if not x[0].is_floating_point() and not x[1].is_floating_point():
        return torch.div(x[0], x[1], rounding_mode="trunc")
    return torch.div(x[0], x[1])


@op("ConstantOfShape")
def _constant_of_shape(x, a):
    value = a.get("value")
    fill = torch.from_numpy(onnx_numpy(value)).reshape(()) if value is not None else torch.zeros(())
    return fill.expand(tuple(int(s) for s in x[0].tolist())).clone()


def onnx_numpy(t):
    return numpy_helper.to_array(t).copy()


@op("Split")
def _split(x, a):
    axis = int(a.get("axis", 0)) % x[0].dim()
    sizes = x[1].tolist() if len(x) > 1 and x[1] is not None else a.get("split")
    if sizes is None:  # equal parts (the last smaller where it does not divide)
        n, parts = x[0].shape[axis], int(a.get("num_outputs", a["_n_out"]))
        sizes = [-(-n // parts)] * (parts - 1)
        sizes.append(n - sum(sizes))
    return torch.split(x[0], [int(s) for s in sizes], dim=axis)


@op("Resize")
def _resize(x, a):
    """Nearest (asymmetric, floor: what exporters emit for Upsample) and linear (half_pixel) resizing."""
    inp = x[0]
    scales = x[2] if len(x) > 2 and x[2] is not None and x[2].numel() else None
    sizes = x[3] if len(x) > 3 and x[3] is not None and x[3].numel() else None
    if sizes is not None:
        out = [int(v) for v in sizes.tolist()[2:]]
    elif scales is not None:
        if any(float(v) != 1.0 for v in scales.tolist()[:2]):
            raise ModelError("Resize of the batch or channel axis is not supported in QAT")
        out = [int(d * float(f)) for d, f in zip(inp.shape[2:], scales.tolist()[2:])]
    else:
        raise ModelError("Resize without scales or sizes is not supported in QAT")
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = a.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    nearest = a.get("nearest_mode", b"round_prefer_floor")
    nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
    if mode == "nearest" and ctm == "asymmetric" and nearest == "floor":
        return F.interpolate(inp, size=out, mode="nearest")
    if mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners") and inp.dim() == 4:
        return F.interpolate(inp, size=out, mode="bilinear", align_corners=ctm == "align_corners")
    raise ModelError(f"Resize mode '{mode}' with '{ctm}' coordinates is not supported in QAT "
                     "(nearest/asymmetric/floor and linear/half_pixel are)")


OPS["Equal"] = lambda x, a: torch.eq(x[0], x[1])
OPS["Greater"] = lambda x, a: torch.gt(x[0], x[1])
OPS["GreaterOrEqual"] = lambda x, a: torch.ge(x[0], x[1])
OPS["Less"] = lambda x, a: torch.lt(x[0], x[1])
OPS["LessOrEqual"] = lambda x, a: torch.le(x[0], x[1])
OPS["And"] = lambda x, a: torch.logical_and(x[0], x[1])
OPS["Or"] = lambda x, a: torch.logical_or(x[0], x[1])
OPS["Not"] = lambda x, a: torch.logical_not(x[0])
OPS["Where"] = lambda x, a: torch.where(x[0], x[1], x[2])
OPS["Exp"] = lambda x, a: torch.exp(x[0])
OPS["Log"] = lambda x, a: torch.log(x[0])
OPS["Abs"] = lambda x, a: torch.abs(x[0])
OPS["Reciprocal"] = lambda x, a: torch.reciprocal(x[0])
OPS["Gelu"] = lambda x, a: F.gelu(x[0], approximate="tanh" if a.get("approximate", b"none") in (b"tanh", "tanh")
                                  else "none")



# --- recurrent and signal models (CNN + LSTM OCR, voice activity): LSTM, Pad ----------------------
def _text(v, default: str) -> str:
    v = v if v is not None else default
    return v.decode() if isinstance(v, bytes) else v


def _torch_gates(w: torch.Tensor) -> torch.Tensor:
    """ONNX stacks an LSTM's gates i, o, f, c along axis 0; torch i, f, c, o."""
    i, o, f, c = w.chunk(4, 0)
    return torch.cat([i, f, c, o], 0)


@op("LSTM")
def _lstm(x, a):
    """ONNX LSTM (layout 0: [seq, batch, features]; default activations, no peepholes or clip), run
    by torch's own LSTM kernel; outputs Y [seq, directions, batch, hidden], Y_h, Y_c."""
    if any(k in a for k in ("activations", "clip")) or int(a.get("input_forget", 0)) or int(a.get("layout", 0)):
        raise ModelError("LSTM with custom activations, clip, input_forget or layout 1 is not supported in QAT")
    X, W, R = x[0], x[1], x[2]
    B = x[3] if len(x) > 3 else None
    lens = x[4] if len(x) > 4 else None
    if len(x) > 7 and x[7] is not None:
        raise ModelError("LSTM peepholes (input P) are not supported in QAT")
    if lens is not None and bool((lens != X.shape[0]).any()):
        raise ModelError("LSTM with sequence_lens shorter than the sequence is not supported in QAT")
    dirs, hidden = W.shape[0], int(a["hidden_size"])
    direction = _text(a.get("direction"), "forward")
    batch = X.shape[1]
    zeros = X.new_zeros(dirs, batch, hidden)
    h0 = x[5] if len(x) > 5 and x[5] is not None else zeros
    c0 = x[6] if len(x) > 6 and x[6] is not None else zeros
    params = []
    for d in range(dirs):
        b = B[d] if B is not None else X.new_zeros(8 * hidden)
        params += [_torch_gates(W[d]), _torch_gates(R[d]), _torch_gates(b[:4 * hidden]), _torch_gates(b[4 * hidden:])]
    seq = X.flip(0) if direction == "reverse" else X  # one direction, run backwards
    y, h, c = torch.lstm(seq, (h0, c0), params, True, 1, 0.0, False, direction == "bidirectional", False)
    if direction == "reverse":
        y = y.flip(0)
    return y.view(X.shape[0], batch, dirs, hidden).transpose(1, 2), h, c


@op("Pad")
def _pad(x, a):
    """ONNX Pad (opset 11+: pads as an input): constant, reflect and edge modes."""
    pads = [int(p) for p in x[1].tolist()]
    value = float(x[2]) if len(x) > 2 and x[2] is not None and x[2].numel() else 0.0
    if len(x) > 3 and x[3] is not None:
        raise ModelError("Pad with an axes input is not supported in QAT")
    n = x[0].dim()
    begin, end = pads[:n], pads[n:]
    widths: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        widths += [b, e]
    while len(widths) > 2 and widths[-2:] == [0, 0]:  # torch pads the last axes; leading zeros are dropped
        widths = widths[:-2]
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[_text(a.get("mode"), "constant")]
    if mode == "constant":
        return F.pad(x[0], widths, value=value)
    return F.pad(x[0], widths, mode=mode)


def run_op(op_type: str, inputs: Sequence[torch.Tensor | None], attrs: dict) -> torch.Tensor:
    fn = OPS.get(op_type)
    if fn is None:
        raise ModelError(f"QAT cannot train a graph with {op_type} nodes yet (supported: {', '.join(sorted(OPS))}).")
    if op_type in ("MaxPool", "AveragePool"):
        attrs = {**attrs, "_op": op_type}
    return fn(inputs, attrs)
