"""Does a (schema-valid) plan fit the model it is applied to? Every node and tensor it names must be
in the graph, with the op, type and shape the plan's parameters assume; otherwise the emitter would
write a model ONNX Runtime cannot load, or one that silently computes something else.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx

from lowbit.core.granularity import PerChannel, PerGroup, PerTensor
from lowbit.errors import ConfigError, did_you_mean
from lowbit.plan.quant_plan import QuantPlan
from lowbit.plan.schema import path_of

# JSON of a plan: ~35 bytes per scale (indent=1: one line per number, plus its zero point), at most
# one scale per channel or per group of >= 16 weights, ~300 bytes per node and tensor entry. So a
# plan of a model is well under 4x the model's bytes (a depthwise 3x3 channel: 36 weight bytes, ~70
# plan bytes), plus room for the per-entry text of small models.
PLAN_BYTES_BASE = 16 << 20
PLAN_BYTES_PER_MODEL_BYTE = 4
# weights of these ops can be block-wise, along this axis of the constant (emit/int4.py)
BLOCK_AXIS = {"MatMul": (1, 0), "Gemm": (1, 1), "Gather": (0, 1)}  # op: (input slot, reduction axis)


def plan_size_limit(model: onnx.ModelProto) -> int:
    """The most bytes a plan file for `model` can reasonably take; more is not a plan for it."""
    return PLAN_BYTES_BASE + PLAN_BYTES_PER_MODEL_BYTE * model.ByteSize()


def _hint(name: str, names: set[str]) -> str:
    return did_you_mean(name, names).split(" Choices:")[0] if len(names) > 20 else did_you_mean(name, names)


def check_plan_fits(plan: QuantPlan, model: onnx.ModelProto) -> None:
    """Raise ConfigError naming the first entry of `plan` that does not fit `model` (a prepared model)."""
    g = model.graph
    nodes = {n.name: n for n in g.node}
    inits = {t.name: t for t in g.initializer}
    tensors = {o for n in g.node for o in n.output if o} | {i.name for i in g.input} | set(inits)
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.value_info) + list(g.output)
             if v.type.HasField("tensor_type")}
    # counts first: a plan with more entries than the model has names cannot be its plan
    for key, have, limit, what in (("nodes", len(plan.nodes), len(nodes), "nodes"),
                                   ("folded", len(plan.folded), len(nodes), "nodes"),
                                   ("tensors", len(plan.tensors), len(tensors), "tensors"),
                                   ("observed", len(plan.observed), len(tensors), "tensors")):
        if have > limit:
            names = nodes if what == "nodes" else tensors
            first = next((k for k in getattr(plan, key) if k not in names), None)
            raise ConfigError(f"the plan does not fit this model: {path_of(key)} has {have:,} entries, and the model "
                              f"has only {limit:,} {what}" + (f"; {path_of(key, first)} is not one of them"
                                                              if first is not None else "")
                              + ". Make a plan for this model instead.")
    for name, n in plan.nodes.items():
        node = nodes.get(name)
        if node is None:
            raise ConfigError(f"the plan does not fit this model: {path_of('nodes', name)} is not a node of this "
                              f"model.{_hint(name, set(nodes))} Make a plan for this model instead.")
        if n.op != node.op_type:
            raise ConfigError(f"the plan does not fit this model: {path_of('nodes', name, 'op')} is '{n.op}', but "
                              f"that node is a {node.op_type}. Make a plan for this model instead.")
        if n.precision in ("int8-block", "int4"):
            slot = BLOCK_AXIS.get(node.op_type, (None,))[0]
            w = node.input[slot] if slot is not None and len(node.input) > slot else None
            t = plan.tensors.get(w) if w else None
            if t is None or not isinstance(t.qparams.granularity, PerGroup):
                raise ConfigError(f"the plan does not fit this model: {path_of('nodes', name, 'precision')} is "
                                  f"'{n.precision}', which needs a per_group weight plan for its {node.op_type} "
                                  f"weight{f' {w!r}' if w else ''} in plan.tensors.")
    for name, producer in plan.folded.items():
        _check_folded(name, producer, nodes)
    for name in plan.observed:
        if name not in tensors:
            raise ConfigError(f"the plan does not fit this model: {path_of('observed', name)} is not a tensor of "
                              f"this model.{_hint(name, tensors)}")
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    for name, t in plan.tensors.items():
        if name not in tensors:
            raise ConfigError(f"the plan does not fit this model: {path_of('tensors', name)} is not a tensor of this "
                              f"model.{_hint(name, tensors)} Make a plan for this model instead.")
        if t.role == "activation":
            if types.get(name, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT:
                raise ConfigError(f"the plan does not fit this model: {path_of('tensors', name)} is an activation "
                                  f"plan, but the tensor is {onnx.TensorProto.DataType.Name(types[name])}, not FLOAT.")
            continue
        init = inits.get(name)
        if init is None or init.data_type != onnx.TensorProto.FLOAT:
            what = "not a constant" if init is None else onnx.TensorProto.DataType.Name(init.data_type)
            raise ConfigError(f"the plan does not fit this model: {path_of('tensors', name)} is a {t.role} plan, but "
                              f"the tensor is {what}; {t.role}s are FP32 constants (initializers).")
        _check_shape(name, t, tuple(init.dims), consumers.get(name, []))


def _check_folded(name: str, producer: str, nodes: dict[str, onnx.NodeProto]) -> None:
    act, src = nodes.get(name), nodes.get(producer)
    p = path_of("folded", name)
    if act is None or act.op_type not in ("Relu", "Clip"):
        what = "not a node of this model" if act is None else f"a {act.op_type}, not a Relu or Clip"
        raise ConfigError(f"the plan does not fit this model: {p} is {what}; only a Relu or Clip is folded.")
    if src is None or not src.output or src.output[0] != act.input[0]:
        raise ConfigError(f"the plan does not fit this model: {p} is '{producer}', which is not the node that "
                          f"computes {name}'s input; a Relu/Clip is folded only into its own producer.")


def _check_shape(name: str, t, dims: tuple[int, ...], consumers: list[onnx.NodeProto]) -> None:
    """The plan's scales match the constant's shape at its granularity (and block-wise weights sit
    where the block-wise kernels read them)."""
    q = t.qparams
    g = q.granularity
    shape = np.shape(q.scale)
    p = path_of("tensors", name, "scale")
    if isinstance(g, PerTensor):
        want = ()
    else:
        if not -len(dims) <= g.axis < len(dims):
            raise ConfigError(f"the plan does not fit this model: {path_of('tensors', name, 'granularity', 'axis')} "
                              f"is {g.axis}, but the tensor has {len(dims)} dimensions {list(dims)}.")
        axis = g.axis % len(dims)
        if isinstance(g, PerChannel):
            want = (dims[axis],)
        else:
            want = dims[:axis] + (-(-dims[axis] // g.size),) + dims[axis + 1:]
    if shape != want:
        raise ConfigError(f"the plan does not fit this model: {p} has shape {list(shape)}, and the tensor "
                          f"{list(dims)} at {g.kind} needs {list(want)}.")
    if not isinstance(g, PerGroup):
        return
    for node in consumers:
        slot, axis = BLOCK_AXIS.get(node.op_type, (None, None))
        if slot is None or len(node.input) <= slot or node.input[slot] != name:
            raise ConfigError(f"the plan does not fit this model: {path_of('tensors', name)} is block-wise "
                              f"(per_group), but {node.name} ({node.op_type}) has no block-wise kernel for it; "
                              "only MatMul / Gemm weights and Gather tables have one.")
        if len(dims) != 2 or g.axis % 2 != axis or dims[axis] % g.size:
            raise ConfigError(f"the plan does not fit this model: {path_of('tensors', name, 'granularity')} must "
                              f"group axis {axis} of the 2-D {node.op_type} constant {list(dims)} into blocks that "
                              f"divide it; got axis {g.axis}, size {g.size}.")


def plan_to_apply(plan: Any, model: onnx.ModelProto) -> QuantPlan:
    """The plan given to quantize(plan=...) for `model`, checked like user input (lowbit.plan.schema):
    a file no larger than a plan of this model can be, a dict, or a QuantPlan built in Python."""
    if isinstance(plan, QuantPlan):
        return plan.check()
    if isinstance(plan, dict):
        return QuantPlan.from_dict(plan)
    if isinstance(plan, (str, os.PathLike)):
        return QuantPlan.load(plan, max_bytes=plan_size_limit(model))
    raise ConfigError(f"plan must be a QuantPlan, a dict or the path of a plan file; got {type(plan).__name__}.")
