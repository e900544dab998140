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

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.core.granularity import PerGroup
from lowbit.emit.blocks import _int8_input, accuracy_level, quantize_block_inputs
from lowbit.emit.qdq import emit_qdq
from lowbit.errors import ConfigError
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.names import Names
from lowbit.plan.quant_plan import QuantPlan, TensorPlan

MS_DOMAIN = "com.microsoft"
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


def has_blocks(plan: QuantPlan) -> bool:
    """True if `plan` holds block-wise (PerGroup) weights."""
    return any(t.role == "weight" and isinstance(t.qparams.granularity, PerGroup) for t in plan.tensors.values())


def emit_mixed(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """A static INT8 plan with some block-wise weights (from the precision search): QDQ for the rest
    (`emit_qdq`, which records the plan), then `MatMulNBits` / `GatherBlockQuantized` for the
    block-wise weights."""
    block = {k: t for k, t in plan.tensors.items() if t.role == "weight" and isinstance(t.qparams.granularity, PerGroup)}
    if not block:
        return emit_qdq(model, plan)
    qdq = dataclasses.replace(plan, tensors={k: t for k, t in plan.tensors.items() if k not in block})
    out = emit_qdq(model, qdq)
    return emit_int4(out, QuantPlan(plan.precision, plan.nodes, block, config=plan.config))
