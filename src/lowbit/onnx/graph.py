"""A read-only index over an ONNX graph: producers, consumers, initializers, value types."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper


class GraphIndex:
    """Lookups the stages need again and again. Build a new one after changing the graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph

    @cached_property
    def nodes(self) -> dict[str, onnx.NodeProto]:
        return {n.name: n for n in self.graph.node}

    @cached_property
    def producer(self) -> dict[str, onnx.NodeProto]:
        return {out: n for n in self.graph.node for out in n.output if out}

    @cached_property
    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        table: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for i in n.input:
                if i:
                    table.setdefault(i, []).append(n)
        return table

    @cached_property
    def initializers(self) -> dict[str, onnx.TensorProto]:
        return {t.name: t for t in self.graph.initializer}

    @cached_property
    def graph_inputs(self) -> list[str]:
        inits = self.initializers
        return [i.name for i in self.graph.input if i.name not in inits]

    @cached_property
    def graph_outputs(self) -> list[str]:
        return [o.name for o in self.graph.output]

    @cached_property
    def elem_types(self) -> dict[str, int]:
        """ONNX element type of every typed value (inputs, outputs, value_info, initializers)."""
        table = {t.name: t.data_type for t in self.graph.initializer}
        for v in list(self.graph.input) + list(self.graph.output) + list(self.graph.value_info):
            if v.type.HasField("tensor_type"):
                table[v.name] = v.type.tensor_type.elem_type
        return table

    @cached_property
    def shaped_values(self) -> dict[str, onnx.ValueInfoProto]:
        """The first value_info / input / output entry with a tensor shape, by name (one pass:
        looking a name up by scanning the graph per layer was quadratic in the node count)."""
        table: dict[str, onnx.ValueInfoProto] = {}
        for v in list(self.graph.value_info) + list(self.graph.input) + list(self.graph.output):
            if v.name not in table and v.type.tensor_type.HasField("shape"):
                table[v.name] = v
        return table

    def is_float(self, name: str) -> bool:
        return self.elem_types.get(name) == onnx.TensorProto.FLOAT

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer, or None if `name` is computed at run time."""
        t = self.initializers.get(name)
        return numpy_helper.to_array(t) if t is not None else None

    def value(self, name: str) -> np.ndarray | None:
        """The value of an initializer or of a Constant node's output; None if computed at run time."""
        v = self.constant(name)
        if v is not None:
            return v
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name == "value_float":
                    return np.asarray(a.f, dtype=np.float32)
        return None

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default
