"""Reading and rewriting the float weights of an ONNX graph, for the algorithms that re-weight
layers in place (batch-norm folding, equalization, bias correction)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from lowbit.onnx.graph import GraphIndex

def constant_value(g: GraphIndex, name: str) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output; None if computed at run time."""
    return g.value(name)


def uses(g: GraphIndex, name: str) -> int:
    """How many node inputs read `name` (a shared initializer must not be rewritten for one user)."""
    return sum(1 for n in g.graph.node for i in n.input if i == name)


def single_consumer(g: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    """The one node reading `tensor`, or None when it has several readers or is a graph output."""
    readers = g.consumers.get(tensor, [])
    if len(readers) != 1 or tensor in g.graph_outputs or uses(g, tensor) != 1:
        return None
    return readers[0]


def layer_axes(node: onnx.NodeProto, g: GraphIndex) -> tuple[int, int] | None:
    """(output-channel axis, input-channel axis) of a Conv / Gemm weight; None if not a constant."""
    if node.op_type == "Conv":
        return (0, 1) if g.constant(node.input[1]) is not None else None
    if node.op_type == "Gemm":
        if g.constant(node.input[1]) is None or g.attr(node, "transA", 0):
            return None
        return (0, 1) if g.attr(node, "transB", 0) else (1, 0)
    return None


def out_channels(node: onnx.NodeProto, g: GraphIndex) -> int:
    axes = layer_axes(node, g)
    assert axes is not None
    return int(g.constant(node.input[1]).shape[axes[0]])


def has_constant_bias(node: onnx.NodeProto, g: GraphIndex) -> bool:
    """True when the layer has no bias or a constant one of size 1 or C_out (what bias_value reads)."""
    name = bias_name(node)
    if name is None:
        return True
    b = g.constant(name)
    return b is not None and b.size in (1, out_channels(node, g))


def bias_name(node: onnx.NodeProto) -> str | None:
    return node.input[2] if len(node.input) > 2 and node.input[2] else None


def bias_value(node: onnx.NodeProto, g: GraphIndex) -> np.ndarray:
    """The layer's effective per-output-channel bias, shape (C,) float32 (zeros when absent;
    Gemm's beta included)."""
    n = out_channels(node, g)
    name = bias_name(node)
    if name is None:
        return np.zeros(n, dtype=np.float32)
    b = g.constant(name)
    if b is None or b.size not in (1, n):
        raise ValueError(f"{node.name}: bias {name} is not a constant of size 1 or {n}")
    beta = float(g.attr(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
    return (np.broadcast_to(b.reshape(-1), (n,)) * beta).astype(np.float32)


def set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replace (or add) the float32 initializer `name`."""
    t = numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name)
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(t)
            return
    model.graph.initializer.append(t)


def unique_name(g: GraphIndex, base: str) -> str:
    taken = set(g.initializers) | set(g.producer) | {i.name for i in g.graph.input}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def own_weights(model: onnx.ModelProto, node: onnx.NodeProto) -> None:
    """Give `node` private copies of its weight and bias initializers if other nodes share them,
    so that rewriting them changes this layer only."""
    for slot in (1, 2):
        g = GraphIndex(model)
        if len(node.input) <= slot or not node.input[slot] or g.constant(node.input[slot]) is None:
            continue
        if uses(g, node.input[slot]) > 1:
            fresh = unique_name(g, f"{node.input[slot]}_{node.name}")
            set_initializer(model, fresh, g.constant(node.input[slot]).astype(np.float32))
            node.input[slot] = fresh


def set_bias(model: onnx.ModelProto, node: onnx.NodeProto, g: GraphIndex, b: np.ndarray) -> str:
    """Write the effective bias `b` (shape (C,)) into `node`, adding a bias input if it has none.
    Returns the bias initializer's name. The caller builds a new GraphIndex afterwards."""
    name = bias_name(node)
    if name is None:
        name = unique_name(g, f"{node.name}_bias")
        while len(node.input) < 2:
            node.input.append("")
        if len(node.input) == 2:
            node.input.append(name)
        else:
            node.input[2] = name
    if node.op_type == "Gemm":  # store beta * C in C itself
        for a in node.attribute:
            if a.name == "beta":
                a.f = 1.0
    set_initializer(model, name, b.astype(np.float32))
    return name
