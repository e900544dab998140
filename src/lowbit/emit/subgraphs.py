"""Weights inside control flow: the bodies of If / Loop / Scan, at any depth.

lowbit's main-graph emitters and ONNX Runtime's quantizers see only the top graph, so a model whose
compute sits inside an `If` (Silero VAD: one branch per sample rate, each with its own weights) was
written back unconverted. This module walks every subgraph, turns its Constant-node weights into
initializers, and stores the tensors its layers read (from its own scope or an enclosing one) as
FP16 or as INT8 + scales ('w8', lowbit.emit.weight_storage), each rebuilt by nodes that ONNX Runtime
folds at load, so every layer keeps FP32's kernel. It also undoes a copy ONNX Runtime's constant
folding makes: a weight of an outer scope folded into each branch that reads it (`share_duplicates`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from lowbit.emit.weight_storage import stored_int8_nodes, weight_only_int8
from lowbit.onnx.names import Names
from lowbit.plan.quant_plan import NodePlan, QuantPlan

# Float tensors of 2+ dimensions or at least this many values are weights or tables (as emit.fp16).
MIN_STORED_ELEMENTS = 256
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


def weight_axis(node: onnx.NodeProto, slot: int, ndim: int) -> int | None:
    """The output-channel axis of a layer's constant input at `slot`, None where it is no weight."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if ndim < 2:
        return None
    if node.op_type in ("Conv", "ConvTranspose") and slot == 1:
        return 0
    if node.op_type in ("LSTM", "GRU", "RNN") and slot in (1, 2):
        return 0  # (directions, gates x hidden, inputs): groups of 32 run along the inputs
    if node.op_type == "MatMul" and slot in (0, 1):
        return ndim - 1 if slot == 1 else ndim - 2  # x @ W: W is (K, N); W @ x: W is (M, K)
    if node.op_type == "Gemm" and slot in (0, 1):
        trans = attrs.get("transB" if slot == 1 else "transA", 0)
        return (0 if trans else 1) if slot == 1 else (1 if trans else 0)
    return None


def lift_constants(model: onnx.ModelProto) -> int:
    """Constant nodes holding float weights inside subgraphs become initializers of their graph:
    the same value under the same name, but visible to the code that stores weights."""
    lifted = 0
    for s in scopes(model)[1:]:
        keep = []
        for node in s.graph.node:
            t = next((a.t for a in node.attribute if a.name == "value" and a.type == AttributeProto.TENSOR), None)
            if node.op_type == "Constant" and t is not None and t.data_type == TensorProto.FLOAT \
                    and (len(t.dims) >= 2 or int(np.prod(t.dims)) >= MIN_STORED_ELEMENTS):
                init = TensorProto()
                init.CopyFrom(t)
                init.name = node.output[0]
                s.graph.initializer.append(init)
                lifted += 1
            else:
                keep.append(node)
        if len(keep) != len(s.graph.node):
            del s.graph.node[:]
            s.graph.node.extend(keep)
    return lifted


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


@dataclass
class StoredWeight:
    """One tensor this module stored in a smaller form, and the layers that read it."""

    tensor: str
    scope: str
    form: str                       # 'fp16' or 'w8'
    readers: list[tuple[str, str, str]]  # (scope path, scope path / node name, op) of each layer reading it


def store_subgraph_weights(model: onnx.ModelProto, form: str) -> list[StoredWeight]:
    """Store, in place, the float tensors read inside subgraphs: form 'fp16' (every large float
    tensor, Cast back to FP32) or 'w8' (Conv / ConvTranspose / MatMul / Gemm / LSTM / GRU / RNN
    weights as INT8 with a scale per group of 32, rebuilt by Cast / Mul / Reshape). A main-graph
    tensor is included only when nothing in the main graph reads it (the main emitters own the rest)."""
    if form not in ("fp16", "w8"):
        raise ValueError(f"form must be 'fp16' or 'w8'; got {form!r}")
    lift_constants(model)
    all_scopes = scopes(model)
    if len(all_scopes) == 1:
        return []
    table = uses(all_scopes)
    made = Names(model)
    stored: list[StoredWeight] = []
    # bodies before the graphs holding them: rebuilding a graph's node list copies its If / Loop
    # nodes, and a body edited after that would be a detached copy
    for s in reversed(all_scopes):
        outputs = {o.name for o in s.graph.output}
        head: list[onnx.NodeProto] = []
        replaced: dict[str, list[TensorProto]] = {}
        for t in s.graph.initializer:
            readers = table.get((id(s.graph), t.name), [])
            if (t.data_type != TensorProto.FLOAT or not readers or t.name in outputs
                    or (s.parent is None and any(r.parent is None for r, _, _ in readers))):
                continue
            w = numpy_helper.to_array(t)
            if form == "fp16":
                if (w.ndim < 2 and w.size < MIN_STORED_ELEMENTS) or not np.all(np.abs(w) <= np.finfo(np.float16).max):
                    continue
                p = made.fresh_prefix(t.name, ("_f16", "_cast"))
                inits = [numpy_helper.from_array(w.astype(np.float16), f"{p}_f16")]
                nodes = [helper.make_node("Cast", [f"{p}_f16"], [t.name], name=f"{p}_cast", to=TensorProto.FLOAT)]
            else:
                axes = [weight_axis(n, slot, w.ndim) for _, n, slot in readers]
                axis = next((a for a in axes if a is not None), None)
                if axis is None:
                    continue
                inits, nodes = stored_int8_nodes(t.name, weight_only_int8(w, axis), made)
            replaced[t.name] = inits
            head.extend(nodes)
            stored.append(StoredWeight(t.name, s.where(), form,
                                       [(r.where(), _node_path(r, n), n.op_type) for r, n, _ in readers]))
        if replaced:
            kept = [t for t in s.graph.initializer if t.name not in replaced]
            del s.graph.initializer[:]
            s.graph.initializer.extend(kept + [i for inits in replaced.values() for i in inits])
            nodes = head + list(s.graph.node)
            del s.graph.node[:]
            s.graph.node.extend(nodes)
    return stored


def _node_path(scope: Scope, node: onnx.NodeProto) -> str:
    name = node.name or f"{node.op_type}->{node.output[0]}"  # bodies' nodes are often unnamed
    return f"{scope.path}/{name}" if scope.path else name


def describe(stored: list[StoredWeight]) -> str:
    """One sentence for a report: how many weights in which subgraphs, in which form."""
    if not stored:
        return ""
    forms = sorted({w.form for w in stored})
    where = sorted({scope for w in stored for scope, _, _ in w.readers})
    shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
    what = {"fp16": "stored FP16", "w8": "stored INT8 (scale per group of 32)"}
    return (f"{len(stored)} weights inside control-flow subgraphs ({shown}) were "
            f"{' / '.join(what[f] for f in forms)} and run in FP32 arithmetic (folded at load)")


def record(plan: QuantPlan, stored: list[StoredWeight]) -> None:
    """Each layer that reads a stored weight, in `plan.nodes` under its scope path and node name."""
    what = {"fp16": ("fp16", "FP16-stored weights"), "w8": ("w8", "INT8-stored weights (scale per group of 32)")}
    for w in stored:
        precision, how = what[w.form]
        for _, node, op in w.readers:
            plan.nodes[node] = NodePlan(node, op, precision,
                                        f"{how} inside control flow ({w.scope}), FP32 arithmetic: lowbit's "
                                        "integer graphs and ONNX Runtime's quantizers do not reach into subgraphs")
