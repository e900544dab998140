"""Float layers of a mixed plan get their float weights back.

Plan-stage algorithms fit each layer to its INT8 grid: bias correction shifts the bias to cancel
the layer's mean INT8 error, AdaRound and GPTQ move the weights onto (and around) the grid. A layer
the precision search then keeps in float must not carry those fits: its bias would add back an
error it no longer makes. On MobileNetV2 with 57 layers promoted to FP16, the uncorrected mix kept
top-1 agreement at 0.89, no better than all-INT8.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import WEIGHTED_OPS
from lowbit.plan.quant_plan import QuantPlan


def restore_float_layers(model: onnx.ModelProto, before: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """`model` with the weight and bias of every layer `plan` keeps in float taken from `before`
    (the float model before the plan-stage algorithms, same node names). Returns `model` itself
    when nothing differs."""
    g, gb = GraphIndex(model), GraphIndex(before)
    changes: list[tuple[onnx.NodeProto, int, onnx.TensorProto]] = []
    for name, p in plan.nodes.items():
        node, original = g.nodes.get(name), gb.nodes.get(name)
        if p.precision.startswith("int") or node is None or original is None or node.op_type not in WEIGHTED_OPS:
            continue
        for slot in (1, 2):
            now = node.input[slot] if slot < len(node.input) else ""
            if not now or now not in g.initializers:
                continue
            current = g.constant(now)
            was = original.input[slot] if slot < len(original.input) else ""
            value = gb.constant(was) if was else None
            if value is None:  # a bias the algorithm added to a layer that had none
                value = np.zeros(current.shape, np.float32)
            if value.shape != current.shape or not np.array_equal(value, current):
                changes.append((node, slot, numpy_helper.from_array(value.astype(np.float32), f"{now}__float")))
    if not changes:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = {n.name: n for n in out.graph.node}
    for node, slot, tensor in changes:
        out.graph.initializer.append(tensor)
        nodes[node.name].input[slot] = tensor.name
    used = {i for n in out.graph.node for i in n.input}
    kept = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out
