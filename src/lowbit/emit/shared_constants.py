"""Identical initializers of one graph stored once.

An emitted model repeats constants: every activation's zero point (mostly 0 or 128), the scale of
a passthrough output (the same as its input's), and weights that an algorithm copied per layer and
then left unchanged (basic-pitch: 2 constant-Q kernels read by 22 convolutions, 176 KB of 451 KB in
its INT8 file). Each copy costs its bytes plus its name; sharing them changes no value.
"""

from __future__ import annotations

import hashlib

import onnx
from onnx import TensorProto

from lowbit.onnx.scopes import is_below, scopes


def _digest(t: TensorProto) -> str:
    copy = TensorProto()
    copy.CopyFrom(t)
    copy.name = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def share_identical_initializers(model: onnx.ModelProto) -> int:
    """In place: in each graph, initializers equal in type, shape and bytes become the one with
    the shortest name (readers in the graph and its bodies renamed). Graph inputs (overridable
    defaults) and outputs are left alone. Returns the number removed."""
    all_scopes = scopes(model)
    removed = 0
    for s in all_scopes:
        g = s.graph
        fixed = {i.name for i in g.input} | {o.name for o in g.output}
        groups: dict[str, list[TensorProto]] = {}
        for t in g.initializer:
            if t.name not in fixed:
                groups.setdefault(_digest(t), []).append(t)
        rename = {}
        for members in groups.values():
            if len(members) > 1:
                keep = min(members, key=lambda t: (len(t.name), t.name))
                rename.update({t.name: keep.name for t in members if t is not keep})
        if not rename:
            continue
        for o in (o for o in all_scopes if o is s or is_below(o, s)):
            for node in o.graph.node:
                for k, name in enumerate(node.input):
                    if name in rename and (o is s or name not in o.defined):  # not a body's own tensor
                        node.input[k] = rename[name]
        kept = [t for t in g.initializer if t.name not in rename]
        del g.initializer[:]
        g.initializer.extend(kept)
        removed += len(rename)
    return removed

