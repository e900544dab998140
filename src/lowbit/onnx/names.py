"""One allocator for every name lowbit adds to a graph.

ONNX keeps node names and tensor names in separate namespaces, so a Gemm node `fc` reading a weight
initializer `fc` is legal; lowbit's derived names (`fc__float_ref` for the node's output and for the
weight's float copy) would then collide. Every name lowbit creates is asked of a `Names` seeded with
all names the model holds (nodes, tensors, initializers, value infos, inputs, outputs, subgraphs):
the wanted name is returned unchanged when it is free (so files are byte-identical to before when
nothing clashes), else the first free `want_1`, `want_2`, ...
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import onnx

# Derived names longer than this are shortened (a prefix, a hash of the whole, the end): exporters
# such as tf2onnx name tensors with every scope joined by ';' (hundreds of characters), and each
# quantized tensor adds five names made from its own; on a small model with such names the INT8
# file was larger than the FP32 one (basic-pitch: 336 KB vs 230 KB; 282 KB with names shortened).
LONG_NAME = 96


def compact(name: str) -> str:
    """`name` itself when short; else its first 24 characters, a hash of the whole and its last
    16 (where lowbit's suffix sits): still readable, still unique, 50 characters. Torch exports
    name tensors up to ~60 characters: with lowbit's suffixes they stay under the limit."""
    if len(name) <= LONG_NAME:
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{name[:24]}~{digest}~{name[-16:]}"


def _graph_names(g: onnx.GraphProto) -> Iterator[str]:
    yield g.name
    for v in (*g.input, *g.output, *g.value_info):
        yield v.name
    for t in g.initializer:
        yield t.name
    for s in g.sparse_initializer:
        yield s.values.name
        yield s.indices.name
    for n in g.node:
        yield n.name
        yield from n.input
        yield from n.output
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graph_names(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _graph_names(sub)


def model_names(model: onnx.ModelProto | onnx.GraphProto) -> set[str]:
    """Every name in the model, subgraphs included (the empty name, 'no input', is not a name)."""
    g = model.graph if isinstance(model, onnx.ModelProto) else model
    names = set(_graph_names(g))
    names.discard("")
    return names


class Names:
    """Fresh names against a model's.

    >>> names = Names(model)
    >>> names.fresh("fc__float_ref")   # 'fc__float_ref', or 'fc__float_ref_1' if that is taken
    """

    def __init__(self, model: onnx.ModelProto | onnx.GraphProto | None = None, taken: Iterable[str] = ()) -> None:
        self.taken: set[str] = model_names(model) if model is not None else set()
        self.taken.update(taken)

    def fresh(self, want: str) -> str:
        """`want` if no name in the model or made before is `want`, else the first free `want_k`."""
        want = compact(want)
        name, k = want, 0
        while name in self.taken:
            k += 1
            name = f"{want}_{k}"
        self.taken.add(name)
        return name

    def fresh_prefix(self, want: str, suffixes: Iterable[str]) -> str:
        """A prefix `p` (`want`, else `want_1`, ...) such that every `p + suffix` is free; all are taken.
        For helpers that name a family of tensors and nodes after one prefix."""
        suffixes = list(suffixes)
        want = compact(want)
        p, k = want, 0
        while any(p + s in self.taken for s in suffixes):
            k += 1
            p = f"{want}_{k}"
        self.taken.update(p + s for s in suffixes)
        return p

    def take(self, name: str) -> str:
        """Record a name made elsewhere (e.g. a fixed graph output) so no fresh one repeats it."""
        self.taken.add(name)
        return name

    def __contains__(self, name: str) -> bool:
        return name in self.taken
