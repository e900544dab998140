"""Fold a constant per-channel scale (Mul) and shift (Add) that follow a Conv into its weights.

PaddlePaddle's PP-LCNet exports end every Conv with a learnable affine `Mul(scale, y) -> Add(y,
shift)` (scalars), written with the constant first, which ONNX Runtime's Conv+Mul / Conv+Add fusions
do not match. Left in the graph, each one is a float op between two quantized tensors: in INT8 it
costs a DequantizeLinear, the op and a QuantizeLinear (PP-OCRv4 det: 52 such pairs, more time than
its INT8 convs saved). Folded, the Conv's per-channel weight scales absorb them exactly:
    s * (W x + b) + c  =  (s W) x + (s b + c)      (s, c per output channel)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from lowbit.names import Names


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """`value` as a (channels,) vector when it broadcasts against a conv output of `rank` dims
    along the channel axis only (scalar, [1], [C,1,1], [1,C,1,1]), else None."""
    if value.dtype != np.float32 or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float32)


def fold_conv_affine(proto: onnx.ModelProto) -> int:
    """Fold Conv -> Mul(constant) / Add(constant) chains into the Conv's weight and bias, in place,
    where the Conv's output feeds only that op. Returns how many Mul / Add nodes were folded."""
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    uses = {name: len(nodes) for name, nodes in readers.items()}
    names = Names(proto)
    removed: set[int] = set()
    gone: set[str] = set()
    new_inits: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray | None:
        if name in new_inits:
            return new_inits[name]
        t = inits.get(name)
        return numpy_helper.to_array(t) if t is not None and t.data_type == TensorProto.FLOAT else None

    for conv in g.node:
        if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2:
            continue
        w = value(conv.input[1])
        if w is None or w.ndim < 3:
            continue
        channels, rank = w.shape[0], w.ndim
        b = value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(channels, np.float32)
        if b is None:
            continue
        folded = 0
        while True:
            out = conv.output[0]
            nxt = readers.get(out, [])
            if out in outputs or len(nxt) != 1 or nxt[0].op_type not in ("Mul", "Add") or len(nxt[0].input) != 2:
                break
            op = nxt[0]
            other = op.input[1] if op.input[0] == out else op.input[0]
            const = value(other) if other != out else None
            vec = _per_channel(const, channels, rank) if const is not None else None
            if vec is None:
                break
            if op.op_type == "Mul":
                w = w * vec.reshape((channels,) + (1,) * (rank - 1))
                b = b * vec
            else:
                b = b + vec
            gone.add(out)  # no longer produced: its value_info goes too
            conv.output[0] = op.output[0]
            removed.add(id(op))
            readers[op.output[0]] = readers.get(op.output[0], [])
            folded += 1
        if not folded:
            continue
        # fresh tensors: the old weight or bias may be read by other nodes too
        w_name, b_name = names.fresh(f"{conv.name or 'conv'}_w_folded"), names.fresh(f"{conv.name or 'conv'}_b_folded")
        new_inits[w_name], new_inits[b_name] = w.astype(np.float32), b.astype(np.float32)
        for old in conv.input[1:3]:
            uses[old] = uses.get(old, 1) - 1
        conv.input[1] = w_name
        if len(conv.input) > 2:
            conv.input[2] = b_name
        else:
            conv.input.append(b_name)
    if not removed:
        return 0
    kept = [n for n in g.node if id(n) not in removed]
    del g.node[:]
    g.node.extend(kept)
    graph_inputs = {i.name for i in g.input}  # old IRs list initializers as inputs too: kept
    dead = {name for name, n in uses.items() if n <= 0 and name in inits and name not in graph_inputs}
    still = {i for n in g.node for i in n.input}
    keep_inits = [t for t in g.initializer if t.name not in dead or t.name in still]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in new_inits.items())
    infos = [v for v in g.value_info if v.name not in gone]
    del g.value_info[:]
    g.value_info.extend(infos)
    return len(removed)
