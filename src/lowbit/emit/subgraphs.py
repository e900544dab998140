"""Weights inside control flow: the bodies of If / Loop / Scan, at any depth.

lowbit's main-graph emitters and ONNX Runtime's quantizers see only the top graph, so a model whose
compute sits inside an `If` (Silero VAD: one branch per sample rate, each with its own weights) was
written back unconverted. This module walks every subgraph, turns its Constant-node weights into
initializers, and stores the tensors its layers read (from its own scope or an enclosing one) as
FP16 or as INT8 + scales ('w8', lowbit.emit.weight_storage), each rebuilt by nodes that ONNX Runtime
folds at load, so every layer keeps FP32's kernel. It also undoes a copy ONNX Runtime's constant
folding makes: a weight of an outer scope folded into each branch that reads it
(`lowbit.onnx.scopes.share_duplicates`). Walking the scopes: `lowbit.onnx.scopes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from lowbit.emit.weight_storage import stored_int8_nodes, weight_only_int8
from lowbit.onnx.names import Names
from lowbit.onnx.scopes import Scope, scopes, uses
from lowbit.plan.quant_plan import NodePlan, QuantPlan

# Float tensors of 2+ dimensions or at least this many values are weights or tables (as emit.fp16).
MIN_STORED_ELEMENTS = 256


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
            readers = _through_loops(table.get((id(s.graph), t.name), []), table)
            if (t.data_type != TensorProto.FLOAT or not readers or t.name in outputs
                    or (s.parent is None and any(r.parent is None and k != CARRIED for r, _, k in readers))):
                continue
            w = numpy_helper.to_array(t)
            if form == "fp16":
                if (w.ndim < 2 and w.size < MIN_STORED_ELEMENTS) or not np.all(np.abs(w) <= np.finfo(np.float16).max):
                    continue
                p = made.fresh_prefix(t.name, ("_f16", "_cast"))
                inits = [numpy_helper.from_array(w.astype(np.float16), f"{p}_f16")]
                nodes = [helper.make_node("Cast", [f"{p}_f16"], [t.name], name=f"{p}_cast", to=TensorProto.FLOAT)]
            else:
                axes = [0 if slot == CARRIED else weight_axis(n, slot, w.ndim) for _, n, slot in readers]
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


# the slot of a reader that only carries the value through a Loop, computing nothing with it
CARRIED = -1


def _through_loops(readers: list, table: dict) -> list:
    """`readers`, where a Loop takes the tensor as a loop-carried input (its input k is its body's
    input k) that the body only hands on and whose final value nothing reads, marked as read at slot
    CARRIED: a dead copy. Paddle's exported decoders hand their weights in that way, and once ONNX
    Runtime's constant folding has put a transposed copy inside the body (SLANet-plus: its GRU's
    1.2 MB), only the dead copy is left in the main graph. The loop-carried weights the body does
    compute with stay as they are: stored INT8, SLANet-plus's decoder projections cost `int8-dynamic`
    whole structure sequences 0.50 -> 0.21 (tokens 0.94 -> 0.91) for 42% -> 33% of the size."""
    out = []
    for scope, node, slot in readers:
        body = next((a.g for a in node.attribute if a.name == "body"), None) if node.op_type == "Loop" else None
        dead = (body is not None and 2 <= slot < len(node.input) and slot < len(body.input)
                and not table.get((id(body), body.input[slot].name)) and _only_carried(scope, node, slot, body, table))
        out.append((scope, node, CARRIED if dead else slot))
    return out


def _only_carried(scope: Scope, loop: onnx.NodeProto, slot: int, body: onnx.GraphProto, table: dict) -> bool:
    """The body passes its input `slot` straight to its output and nothing reads the Loop's final value."""
    if body.output[slot - 1].name != body.input[slot].name:
        return False
    final = loop.output[slot - 2] if slot - 2 < len(loop.output) else ""
    return not final or (not table.get((id(scope.graph), final)) and final not in {o.name for o in scope.graph.output})


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
