"""Models as exporters ship them: old opsets raised with ONNX's version converter (and checked),
weights held in Constant nodes made initializers.

Paddle2ONNX (PP-OCR) and older PyTorch / TF exports write opset 11-12; QuantizeLinear with a
per-channel axis needs 13. ONNX's converter knows every op's signature change between versions
(Split / Squeeze / ReduceSum axes moving from attribute to input at 13, ...), so lowbit uses it
rather than bumping the version number, and then checks with ONNX Runtime that the converted model
computes what the original did before anything else runs on it.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from lowbit.errors import ModelError

log = logging.getLogger(__name__)

TARGET_OPSET = 13  # the oldest opset with per-channel QuantizeLinear: the smallest step that serves
OLDEST_OPSET = 7   # ONNX's converter has adapters from here on; older files predate ONNX 1.2
# the converted model must compute the original's outputs; the ops are the same arithmetic in a new
# form, so any difference beyond float reassociation is a conversion error
RTOL, ATOL_FRACTION = 1e-4, 1e-5
_DYNAMIC_DIM = 64  # a free dimension's size in the random check inputs (batch axis: 1)


def default_opset(proto: onnx.ModelProto) -> int:
    return next((int(i.version) for i in proto.opset_import if i.domain in ("", "ai.onnx")), 0)


def upgrade_opset(proto: onnx.ModelProto, where: str, target: int = TARGET_OPSET) -> onnx.ModelProto:
    """`proto` raised to opset `target` by onnx.version_converter, its outputs checked unchanged on
    random inputs of the declared shapes; `proto` itself when it is already at `target` or newer.
    A conversion that fails or changes the outputs is a ModelError naming the op."""
    opset = default_opset(proto)
    if opset >= target:
        return proto
    if opset < OLDEST_OPSET:
        raise ModelError(f"{where} uses ONNX opset {opset}; lowbit raises opsets {OLDEST_OPSET}-{target - 1} to "
                         f"{target} itself, but nothing older. Re-export the model at opset {target} or newer.")
    try:
        converted = onnx.version_converter.convert_version(proto, target)
    except Exception as e:  # the converter raises C++ messages of several types
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"{where} uses ONNX opset {opset} and lowbit needs {target}; ONNX's version converter "
                         f"could not raise it{_op_named(msg, proto)}: {msg}. Re-export the model at opset "
                         f"{target} or newer.") from None
    check_same_outputs(proto, converted, where, opset, target)
    log.info("%s: raised from ONNX opset %d to %d (outputs checked unchanged)", where, opset, target)
    return converted


def _op_named(msg: str, proto: onnx.ModelProto) -> str:
    ops = sorted({n.op_type for n in proto.graph.node if n.op_type and n.op_type in msg}, key=len, reverse=True)
    return f" (at its {ops[0]} node)" if ops else ""


def random_feeds(proto: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray] | None:
    """One input per graph input, of its declared shape (free dimensions: batch 1, others 64) and
    type; floats standard normal, integers 0/1 (valid token ids and indices); None if a type is not
    a tensor type lowbit can make."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in proto.graph.initializer}
    feeds = {}
    for v in proto.graph.input:
        if v.name in inits:
            continue
        tt = v.type.tensor_type
        if not v.type.HasField("tensor_type") or not tt.elem_type:
            return None
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (1 if k == 0 else _DYNAMIC_DIM)
                for k, d in enumerate(tt.shape.dim)]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[v.name] = rng.standard_normal(dims).astype(dtype)
        elif np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            feeds[v.name] = rng.integers(0, 2, size=dims).astype(dtype)
        else:
            return None
    return feeds


def check_same_outputs(original: onnx.ModelProto, converted: onnx.ModelProto, where: str, opset: int,
                       target: int) -> None:
    """ONNX Runtime runs both on the same random inputs; the outputs must agree. When the original
    itself cannot run on made-up inputs (a fixed-size reshape, say), the check says so in the log
    and the converted model's own loading is checked instead."""
    def run(m: onnx.ModelProto, feeds):
        so = ort.SessionOptions()
        # a model that cannot run on made-up inputs is expected here and said in lowbit's log: ONNX
        # Runtime's own ERROR line for the failed run would only alarm the user (PP-OCRv3 rec)
        so.log_severity_level = 4
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return sess.run(None, feeds) if feeds is not None else None

    feeds = random_feeds(original)
    try:
        want = run(original, feeds)
    except Exception as e:  # onnxruntime's own exception types
        log.info("%s: the opset %d model does not run on random inputs (%s); conversion checked by loading only",
                 where, opset, str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__)
        want, feeds = None, None
    try:
        got = run(converted, feeds)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"{where}: raised from ONNX opset {opset} to {target} by ONNX's version converter, the "
                         f"model no longer loads in ONNX Runtime{_op_named(first, original)}: {first}. Re-export "
                         f"the model at opset {target} or newer.") from None
    if want is None:
        return
    names = [o.name for o in original.graph.output]
    for name, a, b in zip(names, want, got):
        a, b = np.asarray(a), np.asarray(b)
        same = a.shape == b.shape and (
            np.array_equal(a, b) if not np.issubdtype(a.dtype, np.floating)
            else np.allclose(a, b, rtol=RTOL, atol=ATOL_FRACTION * max(1.0, float(np.max(np.abs(a), initial=0))),
                             equal_nan=True))
        if not same:
            raise ModelError(f"{where}: raised from ONNX opset {opset} to {target} by ONNX's version converter, the "
                             f"model's output '{name}' changed (shape {a.shape} -> {b.shape}). Re-export the model at "
                             f"opset {target} or newer.")


def lift_constants(proto: onnx.ModelProto) -> int:
    """Constant nodes of the main graph become initializers of the same name (Paddle and some TF
    exports hold every weight in one): selection, the algorithms and the emitters find weights as
    initializers. Returns how many were lifted."""
    g = proto.graph
    if proto.ir_version < 4:  # initializers had to be graph inputs too then
        return 0
    outputs = {o.name for o in g.output}
    kept, lifted = [], []
    for node in g.node:
        lift = node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs
        value = _constant_value(node) if lift else None
        if value is None:
            kept.append(node)
        else:
            lifted.append(numpy_helper.from_array(value, node.output[0]))
    if lifted:
        del g.node[:]
        g.node.extend(kept)
        g.initializer.extend(lifted)
    return len(lifted)


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    if len(node.output) != 1 or not node.output[0] or len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value" and a.t.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(a.t)
    if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
        v = helper.get_attribute_value(a)
        return np.asarray(v, np.float32 if a.name.startswith("value_float") else np.int64)
    return None  # sparse and string constants stay nodes
