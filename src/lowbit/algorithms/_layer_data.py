"""Per-layer data for the learned-rounding algorithms (AdaRound, GPTQ).

Every quantized Conv / Gemm / MatMul-with-constant-weight is seen as a grouped linear map on rows:
y[r, g] = W[g] @ x[r, g], with W in "matrix" form (G, O/G, K/G). A Conv row is one output position's
im2col patch (the node's strides, pads, dilations and groups), a Gemm / MatMul row one input row.
The calibration data streams through ONNX Runtime one merged batch at a time; only sampled rows (or
running sums of them) are kept, so memory does not grow with the number of samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from lowbit.core.qparams import QParams, _expand
from lowbit.data import Batch
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.session import run_batch, session
from lowbit.onnx.ops import weight_slots
from lowbit.plan.quant_plan import QuantPlan

if TYPE_CHECKING:  # torch is imported where it is used: `import lowbit` stays light
    import torch

log = logging.getLogger(__name__)

MERGED_BATCH = 32  # samples per ONNX Runtime call when the model's batch axis is dynamic
# at most this many MB of streamed values per call (but at least one batch): merging saves per-call
# overhead on small tensors, large ones (a CNN's every layer input) gain nothing from it
STREAM_MB = 64.0
# and at most this many MB in the largest intermediate value of the model run (where shapes are
# known): ONNX Runtime holds a few of them per call, ResNet-18's first conv output is 3 MB per sample
WORK_MB = 16.0


@dataclass
class Layer:
    """One weighted node as a grouped linear map. Conv geometry is 2-D (1-D convs get a unit axis)."""

    node: str
    op: str
    weight: str                     # initializer name
    input: str                      # input tensor name in the float model
    w: np.ndarray                   # float weight, stored layout
    groups: int = 1
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    trans_a: bool = False
    trans_b: bool = False
    alpha: float = 1.0

    def matrix(self, w: torch.Tensor) -> torch.Tensor:
        """Weight in stored layout -> (G, O/G, K/G); a view or a transpose, differentiable."""
        if self.op == "Conv":
            return w.reshape(self.groups, w.shape[0] // self.groups, -1)
        if self.op == "Gemm" and self.trans_b:
            return w.unsqueeze(0)
        return w.t().unsqueeze(0)  # MatMul / Gemm without transB: W is (K, N)

    def unmatrix(self, m: torch.Tensor) -> torch.Tensor:
        """Inverse of `matrix`: (G, O/G, K/G) -> stored layout."""
        if self.op == "Conv":
            return m.reshape(self.w.shape)
        return m[0] if (self.op == "Gemm" and self.trans_b) else m[0].t()

    def positions(self, x: np.ndarray) -> int:
        """Rows one sample of input `x` (a batch) gives."""
        if self.op == "Conv":
            h, w = x.shape[-2:] if x.ndim == 4 else (1, x.shape[-1])
            (kh, kw), (sh, sw), (dh, dw), (t, l, b, r) = self.kernel, self.stride, self.dilation, self.pads
            return ((h + t + b - dh * (kh - 1) - 1) // sh + 1) * ((w + l + r - dw * (kw - 1) - 1) // sw + 1)
        if self.op == "Gemm":
            return 1
        return int(np.prod(x.shape[1:-1])) if x.ndim > 2 else 1

    def rows(self, x: np.ndarray, i: int, pick: np.ndarray | None) -> np.ndarray:
        """Rows of sample `i` of batch `x` at positions `pick` (all if None): (n, G, K/G) float32."""
        if self.op == "Conv":
            return self._patches(x[i], pick)
        if self.op == "Gemm":
            xi = (x.T if self.trans_a else x)[i:i + 1]
            return (self.alpha * xi).reshape(1, 1, -1).astype(np.float32)
        k = x.shape[-1]
        xi = x.reshape(1, k) if x.ndim == 1 else x[i].reshape(-1, k)
        xi = xi if pick is None else xi[pick]
        return xi.reshape(xi.shape[0], 1, k).astype(np.float32)

    def _patches(self, xi: np.ndarray, pick: np.ndarray | None) -> np.ndarray:
        xi = xi[:, None, :] if xi.ndim == 2 else xi  # 1-D conv: (C, L) -> (C, 1, L)
        (kh, kw), (sh, sw), (dh, dw), (t, l, b, r) = self.kernel, self.stride, self.dilation, self.pads
        xp = np.pad(xi, ((0, 0), (t, b), (l, r))) if any(self.pads) else xi
        ow_n = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
        n = ((xp.shape[1] - dh * (kh - 1) - 1) // sh + 1) * ow_n
        idx = np.arange(n) if pick is None else pick
        oh, ow = idx // ow_n, idx % ow_n
        hh = (oh * sh)[:, None] + np.arange(kh) * dh               # (P, kh)
        ww = (ow * sw)[:, None] + np.arange(kw) * dw               # (P, kw)
        patches = xp[:, hh[:, :, None], ww[:, None, :]]            # (C, P, kh, kw)
        p = np.ascontiguousarray(patches.transpose(1, 0, 2, 3)).reshape(len(idx), self.groups, -1)
        return p.astype(np.float32, copy=False)


def find_layers(model: onnx.ModelProto, plan: QuantPlan, weight_only: bool = False
                ) -> tuple[list[Layer], dict[str, str]]:
    """The plan's quantized weighted nodes in topological order, and {node: reason} for those skipped.
    `weight_only`: its 'w8' nodes instead (weights stored INT8 by the emitter, not planned tensors)."""
    g = GraphIndex(model)
    if weight_only:
        quantized = {n.name for n in plan.nodes.values() if n.precision == "w8"}
    else:
        quantized = {n.name for n in plan.quantized_nodes()}
    layers: list[Layer] = []
    skipped: dict[str, str] = {}
    for node in g.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.name not in quantized:
            continue
        w_idx, _, _ = weight_slots(node, g)
        if w_idx is None:
            continue
        w_name = node.input[w_idx]
        t = plan.tensors.get(w_name)
        init = g.initializers.get(w_name)
        planned = weight_only or (t is not None and t.role == "weight")
        if not planned or init is None or init.data_type != onnx.TensorProto.FLOAT:
            skipped[node.name] = "weight is not a planned float32 initializer"
            continue
        if len(g.consumers.get(w_name, [])) != 1:
            skipped[node.name] = "weight is shared by several nodes"
            continue
        w = numpy_helper.to_array(init).astype(np.float32)
        layer = Layer(node.name, node.op_type, w_name, node.input[0], w)
        if node.op_type == "Conv":
            why = _conv_geometry(layer, node, g)
            if why:
                skipped[node.name] = why
                continue
        elif node.op_type == "Gemm":
            layer.trans_a = bool(g.attr(node, "transA", 0))
            layer.trans_b = bool(g.attr(node, "transB", 0))
            layer.alpha = float(g.attr(node, "alpha", 1.0))
        elif w.ndim != 2:
            skipped[node.name] = f"MatMul weight of rank {w.ndim}; only 2-D weights are handled"
            continue
        layers.append(layer)
    return layers, skipped


def _conv_geometry(layer: Layer, node: onnx.NodeProto, g: GraphIndex) -> str:
    w = layer.w
    if w.ndim not in (3, 4):
        return f"Conv with a {w.ndim - 2}-D kernel; only 1-D and 2-D convolutions are handled"
    if g.attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        return "Conv with auto_pad SAME_*; explicit pads are handled"
    one = w.ndim == 3  # 1-D conv: a (1, k) kernel on a (1, L) image
    kernel = tuple(g.attr(node, "kernel_shape", list(w.shape[2:])))
    stride = tuple(g.attr(node, "strides", [1] * len(kernel)))
    dilation = tuple(g.attr(node, "dilations", [1] * len(kernel)))
    pads = tuple(g.attr(node, "pads", [0] * 2 * len(kernel)))
    if one:
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
        pads = (0, pads[0], 0, pads[1])
    layer.groups = int(g.attr(node, "group", 1))
    layer.kernel, layer.stride, layer.dilation = kernel, stride, dilation  # type: ignore[assignment]
    layer.pads = pads  # type: ignore[assignment]
    return ""


def grid(q: QParams, shape: tuple[int, ...], copy: bool = True) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Scale and zero point expanded to the weight's `shape` (any granularity), and (qmin, qmax).
    `copy=False`: read-only broadcast views (no memory of the weight's size) for a reader that
    makes its own arrays."""
    s = np.broadcast_to(_expand(np.asarray(q.scale, np.float32), shape, q.granularity), shape)
    z = np.broadcast_to(_expand(np.asarray(q.zero_point, np.int64), shape, q.granularity), shape)
    qmin, qmax = q.dtype.bounds(q.narrow)
    if not copy:
        return s, z, qmin, qmax
    return np.array(s, dtype=np.float32), np.array(z, dtype=np.int64), qmin, qmax


def on_grid(q: QParams, integers: np.ndarray) -> np.ndarray:
    """Float weights exactly on the grid, w = scale * (q - zp), as lowbit.core computes it: the
    emitter's quantize(w) then gives back `integers` bit for bit."""
    return q.dequantize(np.asarray(integers, dtype=np.int64))


def set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
            return
    raise KeyError(name)


def prefix_model(model: onnx.ModelProto, targets: list[str]) -> onnx.ModelProto:
    """A copy of `model` that computes only what `targets` need and outputs them (ONNX Runtime runs
    every node of a graph, requested or not)."""
    g = model.graph
    producer = {o: k for k, n in enumerate(g.node) for o in n.output if o}
    has_subgraphs = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                        for n in g.node for a in n.attribute)
    need, stack = set(), list(targets)
    while stack and not has_subgraphs:
        k = producer.get(stack.pop())
        if k is not None and k not in need:
            need.add(k)
            stack.extend(i for i in g.node[k].input if i)
    m = onnx.ModelProto()
    if has_subgraphs:
        m.CopyFrom(model)
    else:  # everything but the graph's nodes and initializers, then only the needed ones are copied
        _copy_fields(model, m, skip=("graph",))
        _copy_fields(g, m.graph, skip=("node", "initializer"))
        used = {i for k in need for i in g.node[k].input}
        m.graph.node.extend(g.node[k] for k in sorted(need))
        m.graph.initializer.extend(t for t in g.initializer if t.name in used)
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in targets)
    return m


def _copy_fields(src, dst, skip: tuple[str, ...]) -> None:
    """Copy the set fields of protobuf message `src` into `dst`, except those named in `skip`."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if getattr(fd, "is_repeated", None) or (not hasattr(fd, "is_repeated") and fd.label == fd.LABEL_REPEATED):
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def largest_value_bytes(model: onnx.ModelProto) -> int:
    """Bytes per sample of the largest value a node of `model` computes, among those whose inferred
    shape is known but for the batch axis (1 where none is: no limit from it)."""
    computed = {o for n in model.graph.node for o in n.output}
    largest = 1
    for v in model.graph.value_info:
        dims = v.type.tensor_type.shape.dim
        if (v.name not in computed or len(dims) < 2 or not v.type.tensor_type.elem_type
                or not all(d.HasField("dim_value") for d in dims[1:])):
            continue
        size = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).itemsize
        largest = max(largest, size * int(np.prod([d.dim_value for d in dims[1:]])))
    return largest


def _mergeable(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = i.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            return False
    return True


def merged(data: Iterable[Batch], merge: bool,
           limit: Callable[[], int] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of up to MERGED_BATCH samples (batches are concatenated where the batch axis is dynamic);
    `limit()`, read before each merged batch is closed, lowers that cap (never below one batch)."""
    buf: list[dict[str, np.ndarray]] = []
    count = 0
    for batch in data:
        if not merge:
            yield batch.feeds
            continue
        if buf and any(batch.feeds[k].shape[1:] != buf[0][k].shape[1:] for k in buf[0]):
            yield {k: np.concatenate([f[k] for f in buf]) for k in buf[0]}  # e.g. a new sentence length
            buf, count = [], 0
        buf.append(batch.feeds)
        count += next(iter(batch.feeds.values())).shape[0]
        if count >= (MERGED_BATCH if limit is None else max(1, min(MERGED_BATCH, limit()))):
            yield {k: np.concatenate([f[k] for f in buf]) for k in buf[0]}
            buf, count = [], 0
    if buf:
        yield {k: np.concatenate([f[k] for f in buf]) for k in buf[0]}


def stream(model: onnx.ModelProto, targets: list[str], data: Iterable[Batch],
           threads: int = 0) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(index of the batch's first sample, [value of each target]) for every (merged) batch.

    Memory: the first batch runs on its own; later ones merge only as many samples as keep the
    targets' values of one call within STREAM_MB (a CNN's every layer input is ~25 MB per
    MobileNetV2 sample: 32 merged samples held 0.8 GB, twice while ONNX Runtime handed them over).
    The list of values is emptied when the consumer asks for the next batch: copy what you keep."""
    # serialized first: the prefix model's proto is gone before ONNX Runtime parses its own copy
    prefix = prefix_model(model, targets)
    work = int(WORK_MB * 2**20 // largest_value_bytes(prefix))
    serialized = prefix.SerializeToString()
    del prefix
    sess = session(serialized, threads=threads, optimize=False, arena=False)
    del serialized
    per_sample = [0.0]  # bytes of the targets' values per sample, known after the first call

    def limit() -> int:
        return 1 if not per_sample[0] else min(work, int(STREAM_MB * 2**20 // per_sample[0]))

    start = 0
    for feeds in merged(data, _mergeable(model), limit):
        values = [np.asarray(v, dtype=np.float32) for v in run_batch(sess, Batch(feeds, None, "calibration"), targets)]
        n = int(next(iter(feeds.values())).shape[0])
        if not per_sample[0]:
            per_sample[0] = max(1.0, sum(v.nbytes for v in values) / max(n, 1))
        yield start, values
        values.clear()  # freed before the next call computes the next batch's
        start += n


def count_samples(data: Iterable[Batch]) -> int:
    return sum(int(next(iter(b.feeds.values())).shape[0]) for b in data)


def pick(layer_index: int, sample: int, available: int, wanted: int, seed: int) -> np.ndarray | None:
    """The rows kept of one sample: a seeded choice, the same in every pass (None: all of them)."""
    if wanted >= available:
        return None
    rng = np.random.default_rng([seed, layer_index, sample])
    return np.sort(rng.choice(available, size=wanted, replace=False))


def gather_rows(model: onnx.ModelProto, requests: list[tuple[int, Layer, str]], data: Iterable[Batch],
                per_sample: dict[int, int], seed: int, threads: int = 0) -> dict[int, np.ndarray]:
    """Sampled rows (R, G, K/G) of each requested (layer index, layer, tensor in `model`), in one pass.
    `per_sample[layer index]` rows of each sample are kept, the same ones in every pass."""
    parts: dict[int, list[np.ndarray]] = {k: [] for k, _, _ in requests}
    for start, values in stream(model, [t for _, _, t in requests], data, threads):
        for (k, layer, _), x in zip(requests, values):
            n = x.shape[1] if (layer.op == "Gemm" and layer.trans_a) else x.shape[0]
            avail = layer.positions(x)
            for i in range(n):
                parts[k].append(layer.rows(x, i, pick(k, start + i, avail, per_sample[k], seed)))
        values = x = None  # this batch's values go before the next batch's are computed
    return {k: np.concatenate(v) for k, v in parts.items()}
