"""Transformer quantization, composed from lowbit's stages: INT8 (static QDQ on the linear layers,
the rest float) and block-wise INT4 weights (MatMulNBits / GatherBlockQuantized).

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

from lowbit import __version__
from lowbit.algorithms import AlgorithmContext
from lowbit.algorithms.gptq import GPTQ
from lowbit.algorithms.smoothquant import SmoothQuant
from lowbit.calibration import MSE
from lowbit.config import QuantConfig, Scheme
from lowbit.core.dtypes import dtype_by_name, int4, uint8
from lowbit.core.granularity import PerGroup, PerTensor
from lowbit.core.qparams import QParams
from lowbit.data import as_feeds, specs_from_onnx
from lowbit.graph import GraphIndex
from lowbit.observe import collect_stats
from lowbit.plan import NodePlan, QuantPlan, TensorPlan
from lowbit.planner import build_plan
from lowbit.prepare import fingerprint
from lowbit.transformers.patterns import find_patterns, transformer_selection


def int8_config() -> QuantConfig:
    """The transformer INT8 config: uint8 per-tensor activations calibrated by MSE, int8 per-channel
    weights (7-bit where the CPU's u8 x s8 kernel saturates), GPTQ rounding."""
    return QuantConfig(precision="int8", activations=Scheme(uint8, PerTensor(), symmetric=False, calibration=MSE()),
                       algorithms=(GPTQ(),))


def plan_int8(model: onnx.ModelProto, calib: Any, *, keep_float: Sequence[str] = (),
              smoothquant: SmoothQuant | None = SmoothQuant(0.5, ("qkv", "ffn_up")), gptq: GPTQ | None = GPTQ(),
              gptq_calib: Any = None, config: QuantConfig | None = None) -> tuple[onnx.ModelProto, QuantPlan]:
    """Static INT8 plan of a prepared transformer: SmoothQuant (float stage; by default alpha 0.5 on the
    inputs of Q/K/V and the FFN up-projection, the layer-norm outputs with outlier channels), transformer
    selection, streaming calibration, plan, GPTQ rounding. `gptq_calib`: equal-length feeds for
    GPTQ's Hessians (e.g. `packed_feeds`); defaults to `calib`. Returns (float model, plan)."""
    cfg = config or int8_config()
    specs = specs_from_onnx(model)
    feeds = as_feeds(calib, specs)
    if smoothquant is not None:
        model, _ = smoothquant.apply(model, None, AlgorithmContext(feeds, cfg))
    sel = transformer_selection(model, tuple(keep_float))
    method = cfg.activations.calibration
    stats = collect_stats(model, sel.to_observe, feeds, lambda name: method)
    plan = build_plan(model, sel, stats, cfg)
    if gptq is not None:
        model, plan = gptq.apply(model, plan, AlgorithmContext(as_feeds(gptq_calib or calib, specs), cfg))
    plan.config["transformer"] = {"keep_float": list(keep_float),
                                  "smoothquant": smoothquant.to_dict() if smoothquant else None,
                                  "gptq": gptq.to_dict() if gptq else None}
    plan.model_fingerprint = fingerprint(model)
    return model, plan


def plan_int4(model: onnx.ModelProto, calib: Any = None, *, group_size: int = 32, rounding: str = "gptq",
              int8_layers: Sequence[str] = (), embeddings: bool = True) -> tuple[onnx.ModelProto, QuantPlan]:
    """Block-wise weight plan: every linear MatMul weight int4 PerGroup(0, group_size), symmetric;
    nodes named in `int8_layers` (or `role:<role>`) get int8 blocks instead; the word-embedding
    table (the largest Gather of a constant) int4 PerGroup(1, group_size) when `embeddings`.
    `rounding`: 'rtn' or 'gptq' (lowbit's GPTQ, Frantar et al. 2022; needs equal-length `calib`)."""
    if rounding not in ("rtn", "gptq"):
        raise ValueError(f"rounding must be 'rtn' or 'gptq'; got '{rounding}'")
    g = GraphIndex(model)
    p = find_patterns(model)
    plan = QuantPlan(precision="int4", config={"precision": "int4", "group_size": group_size, "rounding": rounding,
                                              "int8_layers": list(int8_layers)},
                     model_fingerprint=fingerprint(model), lowbit_version=__version__)
    int8 = dtype_by_name("int8")
    for node in g.graph.node:
        plan.nodes[node.name] = NodePlan(node.name, node.op_type, "fp32", "no block-wise kernel; runs in float")
    for name in p.linear:
        node = g.nodes[name]
        w = g.constant(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or w.ndim != 2 or w.shape[0] % group_size:
            plan.nodes[name].reason = "not a MatMul with a (K, N) weight, K a multiple of the group size"
            continue
        eight = any(name == k or k == f"role:{p.linear_role[name]}" for k in int8_layers)
        dt = int8 if eight else int4
        plan.tensors[node.input[1]] = TensorPlan(node.input[1], "weight",
                                                 QParams.for_tensor(w, dt, PerGroup(0, group_size), True, True),
                                                 (float(w.min()), float(w.max())), rounding)
        plan.nodes[name] = NodePlan(name, node.op_type, dt.name, f"block-wise {dt.name} weights "
                                    f"({p.linear_role[name]}), MatMulNBits")
    if embeddings:
        tables = [n for n in g.graph.node if n.op_type == "Gather" and g.constant(n.input[0]) is not None
                  and g.constant(n.input[0]).ndim == 2 and int(g.attr(n, "axis", 0)) == 0]
        if tables:
            big = max(tables, key=lambda n: g.constant(n.input[0]).size)
            e = g.constant(big.input[0])
            if e.shape[1] % group_size == 0:
                plan.tensors[big.input[0]] = TensorPlan(big.input[0], "weight",
                                                        QParams.for_tensor(e, int4, PerGroup(1, group_size), True, True),
                                                        (float(e.min()), float(e.max())), "rtn")
                plan.nodes[big.name] = NodePlan(big.name, "Gather", "int4", "embedding table, GatherBlockQuantized")
    if rounding == "gptq":
        if calib is None:
            raise ValueError("GPTQ rounding needs calibration data (equal-length feeds, e.g. packed_feeds)")
        gptq_plan = QuantPlan(plan.precision, {k: v for k, v in plan.nodes.items() if v.op != "Gather"},
                              {k: v for k, v in plan.tensors.items() if v.method == "gptq"})
        model, _ = GPTQ().apply(model, gptq_plan, AlgorithmContext(as_feeds(calib, specs_from_onnx(model)), None))
        plan.model_fingerprint = fingerprint(model)
    return model, plan


def layer_sensitivity(model: onnx.ModelProto, plan: QuantPlan, calib: Any, tensors: Sequence[str]) -> dict[str, float]:
    """SQNR (dB) of each planned weight's layer output, x W vs x fake_quant(W), on calibration
    inputs: low values mark the layers to keep at 8 bits."""
    from lowbit.algorithms._layer_data import prefix_model
    from lowbit.observe import run_batch, session

    g = GraphIndex(model)
    readers = {g.consumers[t][0].input[0]: t for t in tensors}
    sess = session(prefix_model(model, list(readers)), optimize=False)
    sig = {t: 0.0 for t in tensors}
    err = {t: 0.0 for t in tensors}
    for batch in as_feeds(calib, specs_from_onnx(model)):
        for x_name, x in zip(readers, run_batch(sess, batch, list(readers))):
            t = readers[x_name]
            w = g.constant(t)
            y = x @ w
            sig[t] += float(np.sum(y * y))
            err[t] += float(np.sum((y - x @ plan.tensors[t].qparams.fake_quantize(w)) ** 2))
    return {t: 10 * np.log10(sig[t] / max(err[t], 1e-30)) for t in tensors}
