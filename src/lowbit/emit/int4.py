"""QuantPlan -> ONNX with block-wise 4-bit (or 8-bit) weights run by ONNX Runtime's contrib kernels:
`MatMulNBits` for MatMul layers and `GatherBlockQuantized` for embedding tables (com.microsoft).

lowbit packs the plan's own integers instead of calling `onnxruntime.quantization`'s
MatMulNBitsQuantizer: that tool computes its own scales and rounding from the float weights
(RTN / its own GPTQ / HQQ) and cannot take explicit per-block scales and integers, so a plan whose
weights were placed on their grid by lowbit's GPTQ would be silently re-quantized.

Plan contract, per tensor: dtype int4 (or int8), symmetric (zero point 0), `PerGroup(axis, size)`
with the group along the reduction axis: axis 0 of a MatMul weight (K, N), axis 1 of an embedding
table (V, D); `size` a power of two >= 16 that divides K (D). ONNX Runtime stores unsigned values
with a default zero point of 2**(bits-1), so q + 2**(bits-1) is what is packed (two 4-bit values per
byte, the even index in the low nibble).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.core.granularity import PerGroup
from lowbit.errors import ConfigError
from lowbit.graph import GraphIndex
from lowbit.names import Names
from lowbit.plan import QuantPlan, TensorPlan

MS_DOMAIN = "com.microsoft"
# plan.config["storage"] of the int4 preset's plans: the compute level of its 4-bit MatMulNBits nodes
_LEVEL = "MatMulNBits accuracy_level="


def storage_record(level: int) -> str:
    """What plan.config['storage'] holds for 4-bit blocks computed at `level` (0 float, 4 int8)."""
    return f"{_LEVEL}{int(level)}"


def accuracy_level(plan: QuantPlan) -> int:
    """The compute level of `plan`'s 4-bit MatMulNBits nodes (0: float, unless the plan says)."""
    record = str((plan.config or {}).get("storage") or "")
    return int(record[len(_LEVEL):]) if record.startswith(_LEVEL) and record[len(_LEVEL):].isdigit() else 0


def _int8_input(bits: int, level: int) -> bool:
    """True where MatMulNBits quantizes its input per block to int8 at run time."""
    return bits == 8 or level == 4


def check_block_plan(t: TensorPlan, length: int) -> int:
    """Validate one tensor plan for the block-wise kernels; returns its bit width."""
    q = t.qparams
    g = q.granularity
    if not isinstance(g, PerGroup):
        raise ConfigError(f"{t.name}: block-wise kernels need PerGroup weights; got {g}")
    size = g.size
    if size < 16 or size & (size - 1) or length % size:
        raise ConfigError(f"{t.name}: group size must be a power of two >= 16 dividing {length}; got {size}")
    if q.dtype.bits not in (4, 8) or not q.dtype.signed or np.any(np.asarray(q.zero_point)):
        raise ConfigError(f"{t.name}: block-wise weights must be symmetric int4 or int8; got {q.dtype}")
    return q.dtype.bits


def pack_rows(q: np.ndarray, bits: int, size: int) -> np.ndarray:
    """Signed integers (R, L) -> uint8 (R, L / size, size * bits / 8), offset by 2**(bits-1)."""
    u = (q.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    r, length = u.shape
    u = u.reshape(r, length // size, size)
    if bits == 8:
        return u
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def check_linear_gemm(node: onnx.NodeProto, g: GraphIndex) -> None:
    """A Gemm MatMulNBits can replace: Y = A @ B^T (+ C), B a constant (N, K), C absent or (N,)."""
    b = g.constant(node.input[1])
    c = g.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    ok = (int(g.attr(node, "transB", 0)) == 1 and not int(g.attr(node, "transA", 0))
          and float(g.attr(node, "alpha", 1.0)) == 1.0 and float(g.attr(node, "beta", 1.0)) == 1.0
          and b is not None and b.ndim == 2 and (c is None and len(node.input) < 3 or c is not None and c.shape == (b.shape[0],)))
    if not ok:
        raise ConfigError(f"{node.name}: only Gemm(A, B^T) + bias with constant B and alpha = beta = 1 has a "
                          "block-wise kernel; keep this layer in float or INT8")


def matmul_nbits(node: onnx.NodeProto, w_name: str, bias: list[str], k: int, n: int, bits: int,
                 size: int, level: int = 0) -> onnx.NodeProto:
    """The MatMulNBits node reading `w_name`'s packed blocks (`w_name`: the prefix of their `_nb` /
    `_nbs` initializers). 8-bit blocks always compute in int8 (accuracy level 4: the input is
    quantized per block at run time); ONNX Runtime's float path for 8-bit blocks dequantizes on every
    call and ran at a tenth of FP32's speed on AVX2. 4-bit blocks compute at `level`."""
    extra = {"accuracy_level": 4} if _int8_input(bits, level) else {}
    inputs = [node.input[0], f"{w_name}_nb", f"{w_name}_nbs"] + (["", ""] + bias if bias else [])
    return helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name, domain=MS_DOMAIN,
                            K=k, N=n, bits=bits, block_size=size, **extra)


def emit_int4(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """The ONNX model of a block-wise weight plan: each planned MatMul weight becomes a MatMulNBits
    node, each planned Gather table a GatherBlockQuantized node; everything else is unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = GraphIndex(out)
    names = Names(out)
    level = accuracy_level(plan)
    stored: dict[str, str] = {}  # weight -> prefix of its packed `_nb` / `_nbs` initializers
    replaced: set[str] = set()
    nodes = []
    for node in out.graph.node:
        t = plan.tensors.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Gather" and t is None:
            t = plan.tensors.get(node.input[0])
        if t is None or t.role != "weight" or plan.nodes.get(node.name) is None \
                or plan.nodes[node.name].precision == "fp32":
            nodes.append(node)
            continue
        w = g.constant(t.name)
        if t.name not in stored:
            stored[t.name] = names.fresh_prefix(t.name, ("_nb", "_nbs"))
        p = stored[t.name]
        if node.op_type == "MatMul":
            k, n = w.shape
            bits = check_block_plan(t, k)
            size = t.qparams.granularity.size
            q = t.qparams.quantize(w).T                                  # (N, K)
            scales = np.asarray(t.qparams.scale, np.float32).T           # (N, K / size)
            nodes.append(matmul_nbits(node, p, [], k, n, bits, size, level))
        elif node.op_type == "Gemm":
            check_linear_gemm(node, g)
            n, k = w.shape                                                # transB: (N, K)
            bits = check_block_plan(t, k)
            size = t.qparams.granularity.size
            q = t.qparams.quantize(w)                                    # (N, K)
            scales = np.asarray(t.qparams.scale, np.float32)             # (N, K / size)
            nodes.append(matmul_nbits(node, p, list(node.input[2:3]), k, n, bits, size, level))
        elif node.op_type == "Gather" and int(g.attr(node, "axis", 0)) == 0:
            v, d = w.shape
            bits = check_block_plan(t, d)
            size = t.qparams.granularity.size
            q = t.qparams.quantize(w)                                    # (V, D)
            scales = np.asarray(t.qparams.scale, np.float32)             # (V, D / size)
            nodes.append(helper.make_node(
                "GatherBlockQuantized", [f"{p}_nb", node.input[1], f"{p}_nbs"], list(node.output),
                name=node.name, domain=MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=size, bits=bits))
        else:
            raise ConfigError(f"{node.name}: {node.op_type} has no block-wise kernel; keep it in float")
        packed = pack_rows(q, bits, size)
        if node.op_type == "Gather":
            packed = packed.reshape(packed.shape[0], -1)
        else:
            scales = scales.reshape(-1)
        if t.name not in replaced:
            out.graph.initializer.extend([numpy_helper.from_array(packed, f"{p}_nb"),
                                          numpy_helper.from_array(scales, f"{p}_nbs")])
            replaced.add(t.name)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    still_used = {i for n in out.graph.node for i in n.input}
    kept = [t for t in out.graph.initializer if t.name not in replaced or t.name in still_used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    del out.graph.value_info[:]
    return out


def emit_int4_simulation(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """A float model whose planned weights are replaced by their fake-quantized values, and whose
    8-bit block layers quantize their input per block as MatMulNBits' int8 path does: what the
    block-wise kernels compute, for parity checks."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, init in enumerate(out.graph.initializer):
        t = plan.tensors.get(init.name)
        if t is not None and t.role == "weight":
            w = numpy_helper.to_array(init).astype(np.float32)
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(t.qparams.fake_quantize(w), init.name))
    opset = next((i.version for i in out.opset_import if i.domain in ("", "ai.onnx")), 13)
    inits, nodes = quantize_block_inputs(list(out.graph.node), GraphIndex(model), plan, opset)
    out.graph.initializer.extend(inits)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def quantize_block_inputs(nodes: list[onnx.NodeProto], g: GraphIndex, plan: QuantPlan, opset: int,
                          names: Names | None = None) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """(new initializers, `nodes`) with, before each MatMul / Gemm whose block weights compute in
    int8 (8-bit blocks; 4-bit ones at accuracy level 4), what
    MatMulNBits' int8 path does to its input (`block_input_fake_quant`), for simulations. `g`
    indexes a model holding the weights (for K)."""
    names = names if names is not None else Names(g.model)
    level = accuracy_level(plan)
    inits, out = [], []
    for node in nodes:
        t = plan.tensors.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 else None
        q = t.qparams if t is not None and t.role == "weight" else None
        if q is not None and isinstance(q.granularity, PerGroup) and _int8_input(q.dtype.bits, level):
            shape = g.constant(t.name).shape
            k = int(shape[1] if node.op_type == "Gemm" else shape[0])
            prefix = names.fresh_prefix(f"{node.name}_blockq", _BLOCKQ_MADE)
            made, pre, node.input[0] = block_input_fake_quant(node.input[0], prefix, k, q.granularity.size, opset)
            inits += made
            out += pre
        out.append(node)
    return inits, out


_BLOCKQ_MADE = tuple(f"_{s}" for s in ("blocks", "127", "tiny", "axes", "abs", "amax", "ReduceMax", "shape", "Shape", "x",
                                        "Reshape", "Abs", "s0", "Scale", "s", "NonZero", "div", "Div", "round",
                                        "Round", "dq", "Mul", "out", "Back"))


def block_input_fake_quant(x: str, prefix: str, k: int, size: int, opset: int
                           ) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto], str]:
    """(initializers, nodes, output) computing what MatMulNBits' int8 path does to its input `x`:
    per block of `size` values along K, scale = max|x| / 127, x -> round(x / scale) * scale."""
    p = prefix
    inits = [numpy_helper.from_array(np.asarray([-1, k // size, size], np.int64), f"{p}_blocks"),
             numpy_helper.from_array(np.float32(127.0), f"{p}_127"),
             numpy_helper.from_array(np.float32(np.finfo(np.float32).tiny), f"{p}_tiny")]
    if opset >= 18:  # ReduceMax's axes moved from attribute to input
        inits.append(numpy_helper.from_array(np.asarray([2], np.int64), f"{p}_axes"))
        amax = helper.make_node("ReduceMax", [f"{p}_abs", f"{p}_axes"], [f"{p}_amax"], name=f"{p}_ReduceMax", keepdims=1)
    else:
        amax = helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_amax"], name=f"{p}_ReduceMax", axes=[2], keepdims=1)
    nodes = [
        helper.make_node("Shape", [x], [f"{p}_shape"], name=f"{p}_Shape"),
        helper.make_node("Reshape", [x, f"{p}_blocks"], [f"{p}_x"], name=f"{p}_Reshape"),
        helper.make_node("Abs", [f"{p}_x"], [f"{p}_abs"], name=f"{p}_Abs"),
        amax,
        helper.make_node("Div", [f"{p}_amax", f"{p}_127"], [f"{p}_s0"], name=f"{p}_Scale"),
        helper.make_node("Max", [f"{p}_s0", f"{p}_tiny"], [f"{p}_s"], name=f"{p}_NonZero"),
        helper.make_node("Div", [f"{p}_x", f"{p}_s"], [f"{p}_div"], name=f"{p}_Div"),
        helper.make_node("Round", [f"{p}_div"], [f"{p}_round"], name=f"{p}_Round"),
        helper.make_node("Mul", [f"{p}_round", f"{p}_s"], [f"{p}_dq"], name=f"{p}_Mul"),
        helper.make_node("Reshape", [f"{p}_dq", f"{p}_shape"], [f"{p}_out"], name=f"{p}_Back"),
    ]
    return inits, nodes, f"{p}_out"


def has_blocks(plan: QuantPlan) -> bool:
    """True if `plan` holds block-wise (PerGroup) weights."""
    return any(t.role == "weight" and isinstance(t.qparams.granularity, PerGroup) for t in plan.tensors.values())


def emit_mixed(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """A static INT8 plan with some block-wise weights (from the precision search): QDQ for the rest
    (`emit_qdq`, which records the plan), then `MatMulNBits` / `GatherBlockQuantized` for the
    block-wise weights."""
    from lowbit.emit.qdq import emit_qdq

    block = {k: t for k, t in plan.tensors.items() if t.role == "weight" and isinstance(t.qparams.granularity, PerGroup)}
    if not block:
        return emit_qdq(model, plan)
    qdq = QuantPlan(plan.precision, plan.nodes, {k: t for k, t in plan.tensors.items() if k not in block},
                    plan.observed, plan.folded, plan.config, plan.model_fingerprint, plan.lowbit_version)
    out = emit_qdq(model, qdq)
    return emit_int4(out, QuantPlan(plan.precision, plan.nodes, block, config=plan.config))
