"""Prepare stage: name every node, fold BatchNorm and constants, infer shapes.

ONNX Runtime's own basic-level graph optimizer does the folding: it is exact (semantics-preserving
rewrites only) and well tested, so lowbit does not re-implement Conv+BN fusion for ONNX input.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from lowbit.data import InputSpec, specs_from_onnx
from lowbit.errors import ModelError
from lowbit.load import LoadedModel
from lowbit.names import Names
from lowbit.upgrade import lift_constants

log = logging.getLogger(__name__)


@dataclass
class PreparedModel:
    """The float model every later stage works on (a private copy), and its inputs."""

    proto: onnx.ModelProto
    name: str
    source: str
    inputs: list[InputSpec]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.proto)


def fingerprint(proto: onnx.ModelProto) -> str:
    """A stable hash of the graph (nodes and weights), for matching plans to models."""
    h = hashlib.sha256()
    h.update(proto.graph.SerializeToString(deterministic=True))
    return h.hexdigest()[:16]


def name_nodes(proto: onnx.ModelProto) -> None:
    """Give every node a unique name: plans, reports and keep_float globs refer to nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def optimize_basic(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Run ONNX Runtime's basic (exact) graph optimizations: constant folding, Conv+BN fusion, ..."""
    with tempfile.TemporaryDirectory(prefix="lowbit-prep-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(out)
        so.log_severity_level = 3
        try:
            ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"ONNX Runtime cannot load the model: {first}") from None
        return onnx.load(str(out))


def own_shared_biases(proto: onnx.ModelProto) -> None:
    """Give each Conv/Gemm a private copy of a bias initializer it shares with other nodes.

    Exporters de-duplicate equal constants (e.g. the all-zero biases of BN-folded layers); an int32
    bias lives on its own layer's input x weight grid, so one shared copy cannot serve several layers,
    and ONNX Runtime then declines to fuse them into integer kernels."""
    inits = {t.name: t for t in proto.graph.initializer}
    made = Names(proto)
    readers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
            continue
        name = node.input[2]
        if readers[name] > 1:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[name])
            copy.name = made.fresh(f"{name}__{node.name}")
            proto.graph.initializer.append(copy)
            readers[name] -= 1
            node.input[2] = copy.name


def fill_missing_types(proto: onnx.ModelProto) -> int:
    """Element types for the tensors ONNX's shape inference left untyped (it stops at ops it does not
    know, e.g. com.microsoft ones, and at some Loop / If outputs): ONNX Runtime types every tensor when
    it loads a model, so the untyped ones are exposed as outputs of an unoptimized session and their
    types read back (nothing runs). Only float tensors are quantized: a tensor of unknown type would
    otherwise be skipped even when it is float. Returns how many were typed."""
    g = proto.graph
    typed = {t.name for t in g.initializer}
    typed |= {v.name for v in (*g.input, *g.output, *g.value_info) if v.type.tensor_type.elem_type}
    missing = list(dict.fromkeys(o for n in g.node for o in n.output if o and o not in typed))
    if not missing:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for name in missing:
        probe.graph.output.add().name = name
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        outs = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"]).get_outputs()
    except Exception as e:  # onnxruntime's own types; the float graph loaded before, so this is rare
        log.warning("could not type %d tensors with ONNX Runtime (%s); they stay unquantized", len(missing), e)
        return 0
    found = 0
    for o in outs:
        elem = _ORT_TYPES.get(o.type)
        if o.name in missing and elem is not None:
            g.value_info.append(onnx.helper.make_tensor_value_info(o.name, elem, None))
            found += 1
    return found


_ORT_TYPES = {f"tensor({name})": code for name, code in (
    ("float", onnx.TensorProto.FLOAT), ("float16", onnx.TensorProto.FLOAT16), ("double", onnx.TensorProto.DOUBLE),
    ("bfloat16", onnx.TensorProto.BFLOAT16), ("int64", onnx.TensorProto.INT64), ("int32", onnx.TensorProto.INT32),
    ("int16", onnx.TensorProto.INT16), ("int8", onnx.TensorProto.INT8), ("uint8", onnx.TensorProto.UINT8),
    ("uint16", onnx.TensorProto.UINT16), ("uint32", onnx.TensorProto.UINT32), ("uint64", onnx.TensorProto.UINT64),
    ("bool", onnx.TensorProto.BOOL), ("string", onnx.TensorProto.STRING))}


def drop_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the value_info that `prepare` inferred, before a model ships. ONNX Runtime infers shapes
    itself; given ours it fuses differently (all-MiniLM's Add + LayerNormalization into
    SkipLayerNormalization, 4% slower on AVX2), so a graph meant to run FP32's kernels would not."""
    del model.graph.value_info[:]
    return model


def prepare(loaded: LoadedModel, optimize: bool = True) -> PreparedModel:
    """The prepared float model: optimized, every node named, shapes inferred."""
    proto = optimize_basic(loaded.proto) if optimize else loaded.proto
    # ORT's constant folding lifts Constant-node weights (Paddle exports hold them all so); this
    # catches what it leaves, and every Constant when not optimizing: weights are initializers
    lift_constants(proto)
    if optimize:  # ONNX Runtime's folding copies an outer weight into each subgraph reading it
        from lowbit.emit.subgraphs import share_duplicates

        share_duplicates(proto)
    name_nodes(proto)
    own_shared_biases(proto)
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception as e:  # shape inference is an aid, not a requirement
        log.warning("shape inference failed (%s); continuing without inferred shapes", e)
    fill_missing_types(proto)
    return PreparedModel(proto, loaded.name, loaded.source, specs_from_onnx(proto))
