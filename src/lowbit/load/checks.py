"""Checks on an untrusted ONNX graph before lowbit allocates or runs anything.

A 100-byte file must not make lowbit allocate 100 GB: every tensor's declared shape is checked
against the bytes it really holds. Graph-level faults (cycles, dangling inputs, duplicate names,
unknown domains) are named, not left to crash a library later.
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto, helper

from lowbit.errors import ModelError

_TYPED_FIELDS = {
    TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data", TensorProto.INT64: "int64_data",
    TensorProto.UINT64: "uint64_data", TensorProto.STRING: "string_data",
}
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}
MAX_ELEMENTS = 2**34  # 16 G elements: nothing lowbit quantizes is near this
_PACKED_4BIT = tuple(getattr(TensorProto, t) for t in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, t))


def check_tensor_sizes(graph: onnx.GraphProto, where: str) -> None:
    """Each initializer's dims must match the data it carries (external data is checked on load)."""
    for t in graph.initializer:
        if any(d < 0 for d in t.dims):
            raise ModelError(f"{where}: tensor '{t.name}' declares a negative dimension {list(t.dims)}.")
        n = math.prod(int(d) for d in t.dims)  # exact: a float product of huge dims and a 0 is NaN
        if n > MAX_ELEMENTS:
            raise ModelError(f"{where}: tensor '{t.name}' declares {n} elements, far beyond any real model.")
        if t.data_location == TensorProto.EXTERNAL or t.data_type == TensorProto.STRING:
            continue
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, ValueError, TypeError):
            raise ModelError(f"{where}: tensor '{t.name}' has unknown element type {t.data_type}.") from None
        if t.raw_data:
            bits = 4 if t.data_type in _PACKED_4BIT else itemsize * 8
            need = (n * bits + 7) // 8
            if len(t.raw_data) != need:
                raise ModelError(f"{where}: tensor '{t.name}' declares shape {list(t.dims)} ({need} bytes) "
                                 f"but holds {len(t.raw_data)} bytes: the file is corrupt or was tampered with.")
        else:
            field = _TYPED_FIELDS.get(t.data_type, "int32_data")
            have = len(getattr(t, field))
            if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
                have //= 2
            need = (n + 1) // 2 if t.data_type in _PACKED_4BIT else n  # two 4-bit values per int32_data entry
            if have != need and not (need == 0 and have == 0):
                packed = f" ({need} packed entries)" if need != n else ""
                raise ModelError(f"{where}: tensor '{t.name}' declares {n} elements{packed} but holds {have}.")


def check_graph(graph: onnx.GraphProto, opset_domains: set[str], where: str) -> None:
    """Duplicate names, unknown domains, dangling inputs and cycles, each named."""
    seen: set[str] = set()
    for node in graph.node:
        if node.name and node.name in seen:
            raise ModelError(f"{where}: two nodes are both named '{node.name}'; node names must be unique.")
        seen.add(node.name)
        if node.domain not in KNOWN_DOMAINS and node.domain not in opset_domains:
            raise ModelError(f"{where}: node '{node.name or node.op_type}' uses operator domain '{node.domain}', "
                             "which neither ONNX nor ONNX Runtime knows and the model does not import.")
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    outputs: set[str] = set()
    for node in graph.node:
        for o in node.output:
            if o and o in outputs:
                raise ModelError(f"{where}: tensor '{o}' is produced by two nodes (last: '{node.name}').")
            outputs.add(o)
    # Kahn's algorithm, linear in the graph: a node runs once all its inputs exist; what never
    # runs is a cycle or dangles. (Sweeping the node list until nothing changes was quadratic: a
    # 10,000-node chain stored in reverse order took minutes.)
    waiting: dict[str, list[int]] = {}  # tensor -> nodes still waiting for it
    missing_count = []
    for k, node in enumerate(graph.node):
        needs = {i for i in node.input if i and i not in produced}
        missing_count.append(len(needs))
        for i in needs:
            waiting.setdefault(i, []).append(k)
    ready = [k for k, c in enumerate(missing_count) if c == 0]
    while ready:
        for o in graph.node[ready.pop()].output:
            for k in waiting.pop(o, []) if o else []:
                missing_count[k] -= 1
                if missing_count[k] == 0:
                    ready.append(k)
    pending = [node for k, node in enumerate(graph.node) if missing_count[k]]
    if pending:
        node = pending[0]
        missing = [i for i in node.input if i and i in waiting]
        kind = "a cycle" if all(m in outputs for m in missing) else "an input nothing produces"
        raise ModelError(f"{where}: node '{node.name or node.op_type}' needs {missing[:3]}, {kind} "
                         f"({len(pending)} node(s) can never run).")


def check_text(proto: onnx.ModelProto, where: str) -> None:
    """Every name in the graph must be valid UTF-8. Protobuf hands an invalid string field back as
    bytes (and refuses it when written back), which would surface as an error deep inside lowbit."""
    g = proto.graph
    texts: list = [proto.producer_name, g.name]
    for n in g.node:
        texts += [n.name, n.op_type, n.domain, *n.input, *n.output, *(a.name for a in n.attribute)]
    for v in list(g.input) + list(g.output) + list(g.value_info) + list(g.initializer):
        texts.append(v.name)
    texts += [o.domain for o in proto.opset_import] + [p.key for p in proto.metadata_props]
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise ModelError(f"{where}: the model holds a name that is not valid UTF-8 ({bytes(bad)[:40]!r}): the file "
                         "is corrupt. Re-export it or check the download.")
