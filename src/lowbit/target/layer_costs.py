"""What each layer costs in ONNX Runtime on this machine, in FP32, INT8 and FP16, measured.

Each quantizable layer is cut out into a one-node model with its real shapes (batch 1), in three
forms — float, fused integer (DQ -> op -> Q, which ONNX Runtime turns into QLinearConv / QGemm),
and FP16 — and the three are timed interleaved. The per-run times are kept (their spread decides
whether a difference is noise: lowbit.target.latency_choice) and cached per machine and runtime
(lowbit.target.layer_cost_cache), so the measurement is paid once. On AVX2 CPUs, for example, a 3-channel first convolution runs ~2.5x
slower in INT8 than in FP32, while 1x1 convolutions run ~2x faster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from lowbit.onnx.graph import GraphIndex
from lowbit.target.latency_choice import RatioEstimate, estimate_ratio
from lowbit.target.layer_cost_cache import cache_path, load_cache, save_cache
from lowbit.onnx.ops import WEIGHTED_OPS, weight_slots
from lowbit.progress import Progress, null_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerCost:
    """One layer's times in ms: medians, and the per-run times they come from (run i of each form
    measured back to back); runs may be empty where only medians are known."""

    node: str
    op: str
    fp32_ms: float
    int8_ms: float
    fp16_ms: float
    fp32_runs: tuple[float, ...] = ()
    int8_runs: tuple[float, ...] = ()
    fp16_runs: tuple[float, ...] = ()

    @property
    def int8_speedup(self) -> float:
        return self.fp32_ms / self.int8_ms if self.int8_ms > 0 else 0.0

    def int8_ratio(self) -> RatioEstimate:
        """INT8/FP32 time ratio with its spread over the runs."""
        return estimate_ratio(self.fp32_runs, self.int8_runs, self.fp32_ms, self.int8_ms)

    @classmethod
    def from_runs(cls, node: str, op: str, runs: dict[str, list[float]]) -> "LayerCost":
        med = {k: float(np.median(v)) for k, v in runs.items()}
        return cls(node, op, med["fp32"], med["int8"], med["fp16"],
                   tuple(runs["fp32"]), tuple(runs["int8"]), tuple(runs["fp16"]))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _shape(g: GraphIndex, name: str) -> list[int] | None:
    """The shape of `name` with unknown dims as 1; None where no shape is recorded."""
    v = g.shaped_values.get(name)
    if v is None:
        return None
    return [d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim]


def _layer_models(node: onnx.NodeProto, g: GraphIndex, x_shape: list[int], y_shape: list[int], w_bits: int
                  ) -> dict[str, bytes]:
    """The node alone as float, fused-integer and FP16 one-node models."""
    w_idx, b_idx, axis = weight_slots(node, g)
    w = g.constant(node.input[w_idx])
    b = g.constant(node.input[b_idx]) if b_idx is not None else None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ins = ["x", "w"] + (["b"] if b is not None else [])

    def model(nodes, inits, elem=TensorProto.FLOAT) -> bytes:
        # the integer form takes and gives uint8, as it does inside a quantized graph
        xi = helper.make_tensor_value_info("x", elem, x_shape)
        yo = helper.make_tensor_value_info("y", elem, y_shape)
        gr = helper.make_graph(nodes, "layer", [xi], [yo], inits)
        return helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    fp32 = model([helper.make_node(node.op_type, ins, ["y"], **attrs)],
                 [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else []))
    fp16 = model([helper.make_node(node.op_type, ins, ["y"], **attrs)],
                 [numpy_helper.from_array(w.astype(np.float16), "w")]
                 + ([numpy_helper.from_array(b.astype(np.float16), "b")] if b is not None else []),
                 TensorProto.FLOAT16)
    qmax = 2 ** (w_bits - 1) - 1
    rng = np.random.default_rng(0)
    wq = rng.integers(-qmax, qmax + 1, size=w.shape).astype(np.int8)
    n_out = w.shape[axis]
    inits = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.full(n_out, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(n_out, np.int8), "wz"),
             numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.uint8(128), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=axis)]
    qins = ["xd", "w"]
    if b is not None:
        inits += [numpy_helper.from_array(np.zeros(b.shape, np.int32), "bq"),
                  numpy_helper.from_array(np.full(b.shape, 0.0002, np.float32), "bs")]
        nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"], axis=0))
        qins.append("b")
    nodes += [helper.make_node(node.op_type, qins, ["yf"], **attrs),
              helper.make_node("QuantizeLinear", ["yf", "s", "z"], ["y"])]
    int8 = model(nodes, inits, TensorProto.UINT8)
    return {"fp32": fp32, "int8": int8, "fp16": fp16}


def _time(models: dict[str, bytes], x: np.ndarray, threads: int, runs: int) -> dict[str, list[float]]:
    """Per-run times in ms of each model, the models taking turns in every run."""
    sessions = {}
    for k, m in models.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 4  # a layer that cannot run alone is skipped, not an error to print
        sessions[k] = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"])
    as_uint8 = np.clip(np.rint(x * 20 + 128), 0, 255).astype(np.uint8)
    feeds = {k: {"x": as_uint8 if k == "int8" else x.astype(np.float16 if k == "fp16" else np.float32)}
             for k in models}
    for k, s in sessions.items():
        for _ in range(3):
            s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[k])
            # floored: a time is positive (the cache rejects 0), even below the clock's resolution
            times[k].append(max((time.perf_counter() - t0) * 1e3, 1e-6))
    return times


def _key(node: onnx.NodeProto, g: GraphIndex, x_shape, threads: int, w_bits: int) -> str:
    w_idx, _, _ = weight_slots(node, g)
    w = g.initializers[node.input[w_idx]]
    sig = [node.op_type, sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute),
           x_shape, list(w.dims), len(node.input), threads, w_bits, ort.__version__, _cpu_name()]
    return hashlib.sha256(json.dumps(sig, default=str).encode()).hexdigest()[:20]


def measure_layer_costs(model: onnx.ModelProto, threads: int = 1, runs: int = 15, w_bits: int = 7,
                        progress: Progress = null_progress, use_cache: bool = True) -> dict[str, LayerCost]:
    """{node name: LayerCost} for every Conv/Gemm/MatMul with a constant weight and known shapes.

    Cached per layer signature, machine and runtime (`LOWBIT_CACHE`); a cache that cannot be trusted
    is ignored with a warning and rebuilt.
    """
    g = GraphIndex(model)
    path = cache_path()
    cache, rejected = load_cache(path) if use_cache else ({}, False)
    nodes = [n for n in g.graph.node if n.op_type in WEIGHTED_OPS and weight_slots(n, g)[0] is not None]
    costs: dict[str, LayerCost] = {}
    dirty = False
    for i, node in enumerate(nodes):
        x_shape, y_shape = _shape(g, node.input[0]), _shape(g, node.output[0])
        if x_shape is None or y_shape is None:
            continue
        x_shape = [1] + x_shape[1:]
        y_shape = [1] + y_shape[1:]
        key = _key(node, g, x_shape, threads, w_bits)
        if key not in cache:
            x = np.random.default_rng(0).normal(size=x_shape).astype(np.float32)
            try:
                t = _time(_layer_models(node, g, x_shape, y_shape, w_bits), x, threads, runs)
            except Exception as e:  # a layer that cannot be cut out alone (shapes only known in context)
                log.info("layer cost of %s not measured: %s", node.name, str(e).splitlines()[0][:200])
                continue
            cache[key] = t
            dirty = True
        costs[node.name] = LayerCost.from_runs(node.name, node.op_type, cache[key])
        progress("layer costs", i + 1, len(nodes))
    if use_cache and (dirty or rejected):
        save_cache(path, cache)
    return costs
