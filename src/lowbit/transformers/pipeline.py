"""Transformer quantization, composed from lowbit's stages: INT8 (static QDQ on the linear layers,
outlier channels split off in float, the rest float) and block-wise INT4 weights (MatMulNBits /
GatherBlockQuantized).

>>> tok = minilm_tokenizer()
>>> calib = text_feeds(tok, real_sentences("calibration", 128))
>>> model, plan = plan_int8(prepare(load_model(minilm_onnx())).proto, calib)   # doctest: +SKIP
>>> onnx.save(emit_qdq(model, plan), "minilm.int8.onnx")                         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from lowbit.algorithms import AlgorithmContext
from lowbit.algorithms._layer_data import prefix_model
from lowbit.algorithms.gptq import GPTQ
from lowbit.algorithms.smoothquant import SmoothQuant
from lowbit.calibration import MSE
from lowbit.calibration.collect import collect_stats
from lowbit.config import QuantConfig, Scheme
from lowbit.core.dtypes import dtype_by_name, int4, uint8
from lowbit.core.fidelity import sqnr_db
from lowbit.core.granularity import PerGroup, PerTensor
from lowbit.core.qparams import QParams
from lowbit.data import as_feeds, specs_from_onnx
from lowbit.emit.int4 import emit_int4_simulation
from lowbit.errors import ConfigError, DataError, did_you_mean
from lowbit.load.prepare import fingerprint
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.session import run_batch, session
from lowbit.package import __version__
from lowbit.plan.planner import build_plan
from lowbit.plan.quant_plan import NodePlan, QuantPlan, TensorPlan
from lowbit.search.mixed import mixed_plan
from lowbit.transformers.outliers import OutlierSplit
from lowbit.transformers.patterns import find_patterns, transformer_selection

# Chosen on held-out calibration sentences of all-MiniLM-L6-v2 (not the evaluation split): column
# order by decreasing Hessian diagonal and 10% dampening lowered the weight error by a third
# (embedding 1 - cosine 6.5e-4 -> 4.5e-4 with 7-bit weights).
GPTQ_TRANSFORMER = GPTQ(percdamp=0.1, act_order=True)


def int8_config() -> QuantConfig:
    """The transformer INT8 config: uint8 per-tensor activations calibrated by MSE, int8 per-channel
    weights (7-bit where the CPU's u8 x s8 kernel saturates), GPTQ rounding."""
    return QuantConfig(precision="int8", activations=Scheme(uint8, PerTensor(), symmetric=False, calibration=MSE()),
                       algorithms=(GPTQ_TRANSFORMER,))


def plan_int8(model: onnx.ModelProto, calib: Any, *, keep_float: Sequence[str] = (),
              smoothquant: SmoothQuant | None = SmoothQuant(0.5, ("qkv", "ffn_up")),
              outliers: OutlierSplit | None = OutlierSplit(), gptq: GPTQ | None = GPTQ_TRANSFORMER,
              gptq_calib: Any = None, config: QuantConfig | None = None) -> tuple[onnx.ModelProto, QuantPlan]:
    """Static INT8 plan of a prepared transformer: SmoothQuant (float stage; by default alpha 0.5 on the
    inputs of Q/K/V and the FFN up-projection, the layer-norm outputs with outlier channels), outlier
    channels split off into float MatMuls (`OutlierSplit`), transformer selection, streaming
    calibration, plan, GPTQ rounding. `gptq_calib`: equal-length feeds for GPTQ's Hessians (e.g.
    `packed_feeds`); defaults to `calib`. Returns (float model, plan)."""
    cfg = config or int8_config()
    specs = specs_from_onnx(model)
    feeds = as_feeds(calib, specs)
    if smoothquant is not None:
        model, _ = smoothquant.apply(model, None, AlgorithmContext(feeds, cfg))
    if outliers is not None:
        model, _ = outliers.apply(model, None, AlgorithmContext(feeds, cfg))
    sel = transformer_selection(model, tuple(keep_float))
    method = cfg.activations.calibration
    stats = collect_stats(model, sel.to_observe, feeds, lambda name: method)
    plan = build_plan(model, sel, stats, cfg)
    if gptq is not None:
        model, plan = gptq.apply(model, plan, AlgorithmContext(as_feeds(gptq_calib or calib, specs), cfg))
    plan.config["transformer"] = {"keep_float": list(keep_float),
                                  "smoothquant": smoothquant.to_dict() if smoothquant else None,
                                  "outliers": outliers.to_dict() if outliers else None,
                                  "gptq": gptq.to_dict() if gptq else None}
    plan.model_fingerprint = fingerprint(model)
    return model, plan


def plan_int4(model: onnx.ModelProto, calib: Any = None, *, group_size: int = 32, rounding: str = "gptq",
              int8_layers: Sequence[str] | str = "auto", int8_fraction: float = 0.3,
              embeddings: bool = True) -> tuple[onnx.ModelProto, QuantPlan]:
    """Block-wise weight plan: every linear MatMul weight int4 PerGroup(0, group_size), symmetric;
    the word-embedding table (the largest Gather of a constant) int4 PerGroup(1, group_size) when
    `embeddings`. Some layers get int8 blocks instead: with `int8_layers='auto'` (needs `calib`),
    those whose 4-bit weights cost the model output the most per weight, measured one layer at a
    time (`block_sensitivity`), holding at most `int8_fraction` of the linear weights; or the nodes
    named in `int8_layers` (or `role:<role>`). `rounding`: 'rtn' or 'gptq' (lowbit's GPTQ, Frantar
    et al. 2022; needs equal-length `calib`)."""
    if rounding not in ("rtn", "gptq"):
        raise ConfigError(f"rounding must be 'rtn' or 'gptq'; got '{rounding}'")
    if not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"group_size must be a positive whole number such as 32; got {group_size!r}")
    if not 0.0 <= float(int8_fraction) <= 1.0:
        raise ConfigError(f"int8_fraction is a share of the linear weights, from 0 to 1; got {int8_fraction}")
    g = GraphIndex(model)
    p = find_patterns(model)
    plan = QuantPlan(precision="int4", config={"precision": "int4", "group_size": group_size, "rounding": rounding},
                     model_fingerprint=fingerprint(model), lowbit_version=__version__)
    int8 = dtype_by_name("int8")
    for node in g.graph.node:
        plan.nodes[node.name] = NodePlan(node.name, node.op_type, "fp32", "no block-wise kernel; runs in float")
    blocks = {}
    for name in p.linear:
        node = g.nodes[name]
        w = g.constant(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or w.ndim != 2 or w.shape[0] % group_size:
            plan.nodes[name].reason = "not a MatMul with a (K, N) weight, K a multiple of the group size"
            continue
        blocks[name] = w
    sensitivity: dict[str, float] = {}
    if isinstance(int8_layers, str) and int8_layers == "auto":
        if calib is None:
            raise DataError("int8_layers='auto' measures each layer's sensitivity: pass calibration data")
        sensitivity = block_sensitivity(model, calib, list(blocks), group_size)
        eight = _most_sensitive(sensitivity, {n: w.size for n, w in blocks.items()}, int8_fraction)
    else:
        if isinstance(int8_layers, str):
            raise ConfigError(f"int8_layers takes 'auto' or a list of node names / 'role:<role>'; got "
                              f"'{int8_layers}'")
        known = set(p.linear) | {f"role:{r}" for r in p.linear_role.values()}
        unknown = [k for k in int8_layers if k not in known]
        if unknown:
            raise ConfigError(f"int8_layers: '{unknown[0]}' is not a linear layer or role of this model."
                              + did_you_mean(unknown[0], known))
        eight = {n for n in blocks if any(n == k or k == f"role:{p.linear_role[n]}" for k in int8_layers)}
    plan.config["int8_layers"] = sorted(eight)
    for name, w in blocks.items():
        node = g.nodes[name]
        dt = int8 if name in eight else int4
        plan.tensors[node.input[1]] = TensorPlan(node.input[1], "weight",
                                                 QParams.for_tensor(w, dt, PerGroup(0, group_size), True, True),
                                                 (float(w.min()), float(w.max())), rounding)
        why = (f"; 4-bit blocks raise the output error {sensitivity[name]:.2e} (rel. energy), among the most "
               "per weight" if name in eight and name in sensitivity else "")
        plan.nodes[name] = NodePlan(name, node.op_type, dt.name, f"block-wise {dt.name} weights "
                                    f"({p.linear_role[name]}), MatMulNBits{why}")
    if embeddings:
        big = embedding_table(model)
        if big is not None:
            e = g.constant(big.input[0])
            if e.shape[1] % group_size == 0:
                plan.tensors[big.input[0]] = TensorPlan(big.input[0], "weight",
                                                        QParams.for_tensor(e, int4, PerGroup(1, group_size), True, True),
                                                        (float(e.min()), float(e.max())), "rtn")
                plan.nodes[big.name] = NodePlan(big.name, "Gather", "int4", "embedding table, GatherBlockQuantized")
    if rounding == "gptq":
        if calib is None:
            raise DataError("GPTQ rounding needs calibration data (equal-length feeds, e.g. packed_feeds)")
        gptq_plan = QuantPlan(plan.precision, {k: v for k, v in plan.nodes.items() if v.op != "Gather"},
                              {k: v for k, v in plan.tensors.items() if v.method == "gptq"})
        model, _ = GPTQ().apply(model, gptq_plan, AlgorithmContext(as_feeds(calib, specs_from_onnx(model)), None))
        plan.model_fingerprint = fingerprint(model)
    return model, plan


def block_choices(model: onnx.ModelProto, plan: QuantPlan, group_size: int = 32) -> dict[str, dict[str, TensorPlan]]:
    """Block-wise weight options for the precision search ({node: {precision: TensorPlan}}): 'int4'
    (MatMulNBits) for each INT8 linear MatMul of `plan` whose K divides into groups; 'int8' and
    'int4' (GatherBlockQuantized) for the word-embedding table. Round to nearest, symmetric."""
    g = GraphIndex(model)
    out: dict[str, dict[str, TensorPlan]] = {}
    for name in find_patterns(model).linear:
        node = g.nodes[name]
        w = g.constant(node.input[1]) if node.op_type == "MatMul" else None
        n = plan.nodes.get(name)
        if w is not None and w.ndim == 2 and w.shape[0] % group_size == 0 and n is not None and n.precision == "int8":
            out[name] = {"int4": _block_option(g, node.input[1], int4, 0, group_size)}
    out.update(embedding_choices(model, group_size, g))
    return out


def _block_option(g: GraphIndex, w_name: str, dt, axis: int, group_size: int) -> TensorPlan:
    w = g.constant(w_name)
    return TensorPlan(w_name, "weight", QParams.for_tensor(w, dt, PerGroup(axis, group_size), True, True),
                      (float(w.min()), float(w.max())), "rtn")


def embedding_choices(model: onnx.ModelProto, group_size: int = 32,
                      g: GraphIndex | None = None) -> dict[str, dict[str, TensorPlan]]:
    """{table node: {'int8' | 'int4': TensorPlan}}: the word-embedding table in blocks read by
    GatherBlockQuantized; empty when there is no table or its width does not divide into groups."""
    g = g or GraphIndex(model)
    table = embedding_table(model)
    if table is None or g.constant(table.input[0]).shape[1] % group_size:
        return {}
    return {table.name: {"int8": _block_option(g, table.input[0], dtype_by_name("int8"), 1, group_size),
                         "int4": _block_option(g, table.input[0], int4, 1, group_size)}}


def embedding_in_blocks(model: onnx.ModelProto, plan: QuantPlan) -> QuantPlan:
    """`plan` with the word-embedding table (half of a small encoder's weights) in 8-bit blocks, read
    by GatherBlockQuantized, which dequantizes only the rows an input uses: half the file at no
    measurable cost in accuracy or time."""
    choices = embedding_choices(model)
    if not choices:
        return plan
    return mixed_plan(model, plan, {name: "int8" for name in choices}, choices=choices)


def embedding_table(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The Gather (axis 0) of the largest constant 2-D table: the word embeddings."""
    g = GraphIndex(model)
    tables = [n for n in g.graph.node if n.op_type == "Gather" and g.constant(n.input[0]) is not None
              and g.constant(n.input[0]).ndim == 2 and int(g.attr(n, "axis", 0)) == 0]
    return max(tables, key=lambda n: g.constant(n.input[0]).size) if tables else None


def block_sensitivity(model: onnx.ModelProto, calib: Any, layers: Sequence[str], group_size: int = 32,
                      max_batches: int = 8) -> dict[str, float]:
    """{layer: output error energy / output energy} with only that MatMul's weight in int4 blocks
    (round to nearest), on the first `max_batches` calibration batches: end-to-end, so a layer whose
    error the following layers amplify counts as sensitive."""
    g = GraphIndex(model)
    batches = list(as_feeds(calib, specs_from_onnx(model)))[:max_batches]
    ref = [run_batch(session(model), b)[0].astype(np.float64) for b in batches]
    energy = sum(float(np.sum(r * r)) for r in ref)
    out = {}
    for name in layers:
        w_name = g.nodes[name].input[1]
        w = g.constant(w_name)
        one = QuantPlan("int4", tensors={w_name: TensorPlan(w_name, "weight", QParams.for_tensor(
            w, int4, PerGroup(0, group_size), True, True))})
        sess = session(emit_int4_simulation(model, one))
        out[name] = sum(float(np.sum((run_batch(sess, b)[0] - r) ** 2)) for b, r in zip(batches, ref)) / energy
    return out


def _most_sensitive(sensitivity: dict[str, float], sizes: dict[str, int], fraction: float) -> set[str]:
    """Layers by decreasing error per weight, while they hold at most `fraction` of the weights."""
    budget, used, chosen = fraction * sum(sizes.values()), 0, set()
    for name in sorted(sensitivity, key=lambda n: -sensitivity[n] / sizes[n]):
        if used + sizes[name] <= budget:
            chosen.add(name)
            used += sizes[name]
    return chosen


def layer_sensitivity(model: onnx.ModelProto, plan: QuantPlan, calib: Any, tensors: Sequence[str]) -> dict[str, float]:
    """SQNR (dB) of each planned weight's layer output, x W vs x fake_quant(W), on calibration
    inputs: low values mark the layers to keep at 8 bits."""
    g = GraphIndex(model)
    readers: dict[str, list[str]] = {}
    for t in tensors:
        readers.setdefault(g.consumers[t][0].input[0], []).append(t)
    sess = session(prefix_model(model, list(readers)), optimize=False)
    sig = {t: 0.0 for t in tensors}
    err = {t: 0.0 for t in tensors}
    for batch in as_feeds(calib, specs_from_onnx(model)):
        for x_name, x in zip(readers, run_batch(sess, batch, list(readers))):
            for t in readers[x_name]:
                w = g.constant(t)
                y = x @ w
                sig[t] += float(np.sum(y * y))
                err[t] += float(np.sum((y - x @ plan.tensors[t].qparams.fake_quantize(w)) ** 2))
    return {t: sqnr_db(sig[t], max(err[t], 1e-30)) for t in tensors}
