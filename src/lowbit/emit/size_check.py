"""The promise every preset keeps: never write a model larger than the one it was given.

A preset that converted nothing (a model with no weights, or weights only ops lowbit does not store
in low precision read) would still write a file: the same graph plus lowbit's plan record, slightly
larger than the input. That is refused with the reason, before anything is written. So is a file
that grew although its weights shrank: on a model with few weights and long tensor names the
quantization nodes (and their names) can cost more than the weights save (basic-pitch, 230 KB:
int8-fast wrote 336 KB before long names were shortened, 282 KB after). Only models under `TINY_MODEL`
bytes (test-sized graphs, where lowbit's plan record alone is a good part of the file) may grow
when their weights shrank.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import AttributeProto, TensorProto

from lowbit.errors import ModelError
from lowbit.onnx.scopes import is_below, scopes

_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE)
TINY_MODEL = 64 * 1024


@dataclass(frozen=True)
class Sizes:
    file: int     # serialized bytes (external data included where it was loaded)
    tensors: int  # bytes of stored tensors: initializers and Constant values, in every graph


def _constants(graph: onnx.GraphProto) -> list[TensorProto]:
    return [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
            if a.type == AttributeProto.TENSOR]


def sizes(model: onnx.ModelProto, file_bytes: int | None = None) -> Sizes:
    tensors = 0
    for s in scopes(model):
        tensors += sum(t.ByteSize() for t in s.graph.initializer)
        tensors += sum(t.ByteSize() for t in s.graph.sparse_initializer)
        tensors += sum(t.ByteSize() for t in _constants(s.graph))
    return Sizes(model.ByteSize() if file_bytes is None else file_bytes, tensors)


def _left_float(model: onnx.ModelProto, limit: int = 3) -> list[str]:
    """The largest float tensors of `model`, each with where it is and which ops read it."""
    found = []
    for s in scopes(model):
        readers: dict[str, set[str]] = {}
        for other in scopes(model):
            if other is s or is_below(other, s):
                for n in other.graph.node:
                    for i in n.input:
                        readers.setdefault(i, set()).add(n.op_type)
        tensors = [(t, t.name) for t in s.graph.initializer]
        tensors += [(t, n.output[0]) for n in s.graph.node if n.op_type == "Constant"
                    for t in _constants_of(n)]
        for t, name in tensors:
            if t.data_type in _FLOATS:
                ops = ", ".join(sorted(readers.get(name, set()))) or "nothing"
                found.append((t.ByteSize(), f"'{name}' ({t.ByteSize():,} bytes in {s.where()}, read by {ops})"))
    return [text for _, text in sorted(found, key=lambda x: -x[0])[:limit]]


def _constants_of(node: onnx.NodeProto) -> list[TensorProto]:
    return [a.t for a in node.attribute if a.type == AttributeProto.TENSOR]


def check_smaller(preset: str, source: Sizes, output: onnx.ModelProto, output_bytes: int) -> None:
    """Raise ModelError when `output` is not smaller than the model it came from and its stored
    tensors did not shrink either: the preset converted nothing worth a file."""
    out = sizes(output, output_bytes)
    if out.file < source.file:
        return
    if out.tensors < source.tensors:
        if source.file < TINY_MODEL:
            return
        raise ModelError(
            f"preset '{preset}' would make this model larger: {out.file:,} bytes from {source.file:,}. Its stored "
            f"tensors shrank ({source.tensors:,} -> {out.tensors:,} bytes), but the quantization nodes it needs, "
            f"and their names, cost more than that. Nothing was written. Keep the FP32 model, or try a preset "
            f"that adds few nodes: --precision fp16 or int8-dynamic.")
    ops = sorted({n.op_type for s in scopes(output) for n in s.graph.node})
    left = _left_float(output)
    why = (f"its largest float tensors are {'; '.join(left)}" if left
           else "the model holds no weights to store in fewer bits")
    hint = (" Keep the FP32 model as it is." if preset == "fp16" or not left
            else " Keep the FP32 model as it is, or try --preset fp16, which stores every large float tensor in FP16.")
    raise ModelError(
        f"preset '{preset}' cannot make this model smaller: the output would be {out.file:,} bytes, the input "
        f"is {source.file:,} bytes, and its stored tensors did not shrink ({source.tensors:,} -> {out.tensors:,} bytes): lowbit converted "
        f"nothing. "
        f"{why[0].upper() + why[1:]}; the ops are {', '.join(ops) or 'none'}. Nothing was written.{hint}")
