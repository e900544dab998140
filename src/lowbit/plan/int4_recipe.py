"""The int4 preset: 4-bit weights wherever ONNX Runtime has a kernel that reads them.

- MatMul, and Gemm(A, B^T) + bias, with a constant 2-D weight whose reduction axis K divides into
  blocks: weight-only 4-bit blocks (symmetric, one float scale per block of `size` along K) run by
  `MatMulNBits` (emit/int4.py). Activations stay float; `accuracy_level` 4 has the kernel quantize
  its input per block to int8 at run time, 0 (default) computes in float (on MiniLM here level 4 was
  no faster: 0.84x of FP32 vs 1.02x, same fidelity).
- Conv: 4-bit per-channel weights on the int8 kernel (stored INT4, Cast to int8 and folded at load)
  with 8-bit static activations: the w4a8 recipe, as no 4-bit Conv kernel exists.
- The word-embedding table (the largest Gather of a constant 2-D table): 4-bit blocks read by
  `GatherBlockQuantized`, which dequantizes only the rows an input uses.
Everything else stays float. The plan is an ordinary static plan (precision 'int8') whose block
layers have node precision 'int4'; its config records `group_size` and the kernel's accuracy level
(`storage`), so a saved plan re-applies the same way. Plan-stage algorithms (GPTQ) round the blocks
and the Conv weights alike.
"""

from __future__ import annotations

import dataclasses

import onnx

from lowbit.algorithms import AlgorithmContext
from lowbit.config import Scheme
from lowbit.core.dtypes import int4
from lowbit.core.granularity import PerChannel, PerGroup
from lowbit.core.qparams import QParams
from lowbit.emit.blocks import storage_record
from lowbit.emit.int4 import check_linear_gemm
from lowbit.errors import ConfigError
from lowbit.load.prepare import fingerprint
from lowbit.onnx.graph import GraphIndex
from lowbit.plan.calibrate import calibrate
from lowbit.plan.quant_plan import TensorPlan
from lowbit.plan.selection import _kept_float
from lowbit.search.mixed import mixed_plan
from lowbit.transformers.pipeline import embedding_table


def block_choices(model: onnx.ModelProto, size: int, keep_float: tuple[str, ...] = ()
                  ) -> tuple[dict[str, dict[str, TensorPlan]], dict[str, str]]:
    """({layer: {'int4': TensorPlan}}, {layer: why it stays float}): 4-bit blocks of `size` along K
    for each MatMul / Gemm(A, B^T) with a constant 2-D weight, and the word-embedding table along
    its width. Round to nearest (plan-stage algorithms may refine the integers)."""
    g = GraphIndex(model)
    out: dict[str, dict[str, TensorPlan]] = {}
    left: dict[str, str] = {}

    def option(w_name: str, axis: int) -> dict[str, TensorPlan]:
        w = g.constant(w_name)
        q = QParams.for_tensor(w, int4, PerGroup(axis, size), True, True)
        return {"int4": TensorPlan(w_name, "weight", q, (float(w.min()), float(w.max())), "rtn")}

    for node in g.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        w = g.constant(node.input[1])
        if w is None or w.ndim != 2:
            continue  # activation x activation (attention): float
        if _kept_float(node.name, keep_float):
            continue
        axis = 0
        if node.op_type == "Gemm":
            try:
                check_linear_gemm(node, g)
            except ConfigError:
                left[node.name] = "Gemm without transB (or with alpha/beta): no block-wise kernel; float"
                continue
            axis = 1
        if w.shape[axis] % size:
            left[node.name] = (f"K = {w.shape[axis]} is not a multiple of the block size {size}: float "
                               "(a smaller --block-size that divides it would take it)")
            continue
        out[node.name] = option(node.input[1], axis)
    table = embedding_table(model)
    if table is not None and not _kept_float(table.name, keep_float):
        if g.constant(table.input[0]).shape[1] % size == 0:
            out[table.name] = option(table.input[0], 1)
        else:
            left[table.name] = f"embedding width is not a multiple of the block size {size}: float"
    return out, left


def conv_config(config):
    """The static part of the recipe: Conv only, 4-bit per-channel weights, 8-bit activations; the
    float-stage algorithms only (the plan-stage ones run once the blocks are in the plan)."""
    return config.with_(precision="int8", weights=Scheme(int4, PerChannel(0), True, config.weights.calibration),
                        op_types=("Conv",), transformer=False, accuracy_level=0,
                        algorithms=tuple(a for a in config.algorithms if a.stage == "float"))


def calibrate_int4(model: onnx.ModelProto, config, calib, progress, timings: dict | None = None):
    """(float model, plan, float model before the plan-stage fits) for precision 'int4' (see the
    module docstring), as `lowbit.plan.calibrate.calibrate` gives them for int8. `model` is taken
    over, as there."""
    timings = {} if timings is None else timings
    static = conv_config(config)
    c = calibrate(model, static, calib, progress, timings)
    model, plan = c.model, c.plan
    size = config.weights.granularity.size
    choices, left = block_choices(model, size, config.keep_float)
    plan = mixed_plan(model, plan, {n: "int4" for n in choices}, choices=choices)
    for name, c in choices.items():
        op = plan.nodes[name].op
        kernel = "GatherBlockQuantized" if op == "Gather" else "MatMulNBits"
        plan.nodes[name].reason = f"int4: 4-bit weights in blocks of {size} along K, {kernel} (int4 preset)"
    for name, why in left.items():
        if name in plan.nodes:
            plan.nodes[name].reason = why
    plan.config.update(group_size=size, storage=storage_record(config.accuracy_level),
                       algorithms=[a.to_dict() for a in config.algorithms])
    before_fit = model
    tables = {t.name for n, c in choices.items() if plan.nodes[n].op == "Gather" for t in c.values()}
    ctx = AlgorithmContext(calib, static, progress, config.seed, timings)
    for alg in config.algorithms:
        if alg.stage != "plan":
            continue
        progress(alg.registry_name, 0, None)
        # embedding tables are read, not multiplied: no algorithm fits them (round to nearest)
        view = dataclasses.replace(plan, tensors={k: t for k, t in plan.tensors.items() if k not in tables})
        model, view = alg.apply(model, view, ctx)
        plan = dataclasses.replace(view, tensors={**view.tensors, **{k: plan.tensors[k] for k in tables}})
    plan.model_fingerprint = fingerprint(model)
    return model, plan, before_fit
