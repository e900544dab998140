"""The scopes of an ONNX model: its main graph and the bodies of If / Loop / Scan at any depth,
which names each defines and which nodes read them, and identical initializers that constant
folding copied into several scopes shared again (`share_duplicates`, used by `load.prepare`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx
from onnx import AttributeProto, TensorProto

# Copies smaller than this are not worth sharing across scopes.
MIN_SHARED_BYTES = 1024

@dataclass
class Scope:
    graph: onnx.GraphProto
    path: str                       # "" for the main graph, else "If_0.then_branch/Loop_3.body"
    parent: Scope | None = None
    defined: set[str] = field(default_factory=set)

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    def where(self) -> str:
        return self.path or "the main graph"

def node_subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            yield a.name, a.g
        elif a.type == AttributeProto.GRAPHS:
            for k, g in enumerate(a.graphs):
                yield f"{a.name}[{k}]", g

def scopes(model: onnx.ModelProto) -> list[Scope]:
    """Every graph of the model, the main one first, parents before their bodies."""
    out: list[Scope] = []

    def visit(graph: onnx.GraphProto, path: str, parent: Scope | None) -> None:
        s = Scope(graph, path, parent)
        s.defined = ({t.name for t in graph.initializer} | {i.name for i in graph.input}
                     | {o for n in graph.node for o in n.output if o})
        out.append(s)
        for k, node in enumerate(graph.node):
            for attr, body in node_subgraphs(node):
                visit(body, f"{path + '/' if path else ''}{node.name or f'{node.op_type}_{k}'}.{attr}", s)

    visit(model.graph, "", None)
    return out

def has_subgraphs(model: onnx.ModelProto) -> bool:
    return any(True for n in model.graph.node for _ in node_subgraphs(n))

def _owner(scope: Scope, name: str) -> Scope | None:
    s: Scope | None = scope
    while s is not None and name not in s.defined:
        s = s.parent
    return s

def uses(all_scopes: list[Scope]) -> dict[tuple[int, str], list[tuple[Scope, onnx.NodeProto, int]]]:
    """{(id of the defining graph, name): [(reader's scope, reader, input slot)]}, across scopes."""
    table: dict[tuple[int, str], list[tuple[Scope, onnx.NodeProto, int]]] = {}
    for s in all_scopes:
        for node in s.graph.node:
            for slot, name in enumerate(node.input):
                owner = _owner(s, name) if name else None
                if owner is not None:
                    table.setdefault((id(owner.graph), name), []).append((s, node, slot))
    return table

def _digest(t: TensorProto) -> str:
    copy = TensorProto()
    copy.CopyFrom(t)
    copy.name = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()

def _common_ancestor(items: list[Scope]) -> Scope:
    chains = []
    for s in items:
        chain = []
        while s is not None:
            chain.append(s)
            s = s.parent
        chains.append(chain[::-1])
    k = 0
    while all(len(c) > k for c in chains) and all(c[k] is chains[0][k] for c in chains):
        k += 1
    return chains[0][k - 1]

def _rename_reads(scope: Scope, all_scopes: list[Scope], old: str, new: str) -> None:
    inside = [s for s in all_scopes if s is scope or is_below(s, scope)]
    for s in inside:
        for node in s.graph.node:
            for k, name in enumerate(node.input):
                if name == old:
                    node.input[k] = new

def is_below(s: Scope, ancestor: Scope) -> bool:
    p = s.parent
    while p is not None and p is not ancestor:
        p = p.parent
    return p is ancestor

def share_duplicates(model: onnx.ModelProto) -> int:
    """Identical initializers in different scopes become one, in their nearest common scope.
    ONNX Runtime's constant folding copies an outer weight into every branch that reads it through
    a Slice or Unsqueeze (Silero VAD's LSTM weights: 2 copies per branch, the file grew to 142%).
    Returns the bytes saved."""
    all_scopes = scopes(model)
    if len(all_scopes) == 1:
        return 0
    defined_count: dict[str, int] = {}
    for s in all_scopes:
        for name in s.defined:
            defined_count[name] = defined_count.get(name, 0) + 1
    groups: dict[str, list[tuple[Scope, TensorProto]]] = {}
    for s in all_scopes:
        outputs = {o.name for o in s.graph.output}
        for t in s.graph.initializer:
            if t.ByteSize() >= MIN_SHARED_BYTES and t.name not in outputs and defined_count[t.name] == 1:
                groups.setdefault(_digest(t), []).append((s, t))
    saved = 0
    for members in groups.values():
        where = [s for s, _ in members]
        if len(members) < 2 or len({id(s.graph) for s in where}) != len(where):
            continue  # one copy, or copies side by side in one graph (prepare unshares biases on purpose)
        home = _common_ancestor(where)
        keep_scope, keep = next(((s, t) for s, t in members if s is home), members[0])
        for s, t in members:
            if t is keep:
                continue
            _rename_reads(s, all_scopes, t.name, keep.name)
            saved += t.ByteSize()
            _remove_initializer(s.graph, t.name)
        if keep_scope is not home:
            moved = TensorProto()
            moved.CopyFrom(keep)
            _remove_initializer(keep_scope.graph, keep.name)
            home.graph.initializer.append(moved)
    return saved

def _remove_initializer(graph: onnx.GraphProto, name: str) -> None:
    kept = [t for t in graph.initializer if t.name != name]
    del graph.initializer[:]
    graph.initializer.extend(kept)
