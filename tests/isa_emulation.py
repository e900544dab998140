"""The arithmetic of another CPU's integer kernels, emulated in numpy, so that a test of
ISA-specific behaviour runs on every machine the suite meets.

On x86 with AVX2 but no VNNI, ONNX Runtime's u8 x s8 kernels multiply with VPMADDUBSW: the
products of two neighbouring reduction elements are added into an int16 with saturation, and only
then widened to int32 (VPMADDWD). On a VNNI machine the same layer accumulates exactly. The
emulation below recomputes a 1x1 convolution's integer output that way from the integers ONNX
Runtime itself computed for its input, and substitutes it in the session that parity reads.
"""

from __future__ import annotations

import numpy as np
import onnx

from lowbit.emit.qdq import deployed_integer_output
from lowbit.onnx.graph import GraphIndex
from lowbit.plan.quant_plan import QuantPlan


def saturating_pair_dot(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x: uint8 (M, K), w: int8 (O, K) -> int32 (M, O), with each pair of products
    x[k]*w[k] + x[k+1]*w[k+1] saturated to int16 before the int32 sum (VPMADDUBSW)."""
    k = x.shape[1]
    if k % 2:
        x, w = np.pad(x, ((0, 0), (0, 1))), np.pad(w, ((0, 0), (0, 1)))
    prod = x.astype(np.int32)[:, None, :] * w.astype(np.int32)[None, :, :]  # (M, O, K)
    pairs = prod[..., 0::2] + prod[..., 1::2]
    return np.clip(pairs, -32768, 32767).sum(axis=-1).astype(np.int32)


class _PointwiseConv:
    """Everything needed to recompute one 1x1 Conv's uint8 output from its uint8 input."""

    def __init__(self, node: onnx.NodeProto, g: GraphIndex, plan: QuantPlan) -> None:
        x, w, b = node.input[:3]
        self.x, self.y = x, node.output[0]
        wq, bq = plan.tensors[w].qparams, plan.tensors[b].qparams
        self.w = wq.quantize(g.constant(w)).reshape(g.constant(w).shape[0], -1)  # (O, C)
        self.b = bq.quantize(g.constant(b)).astype(np.int64)
        xq, yq = plan.tensors[x].qparams, plan.tensors[self.y].qparams
        self.x_zp = int(np.ravel(xq.zero_point)[0])
        self.y_zp, self.y_scale = int(np.ravel(yq.zero_point)[0]), np.float32(np.ravel(yq.scale)[0])
        self.acc_scale = (np.float32(np.ravel(xq.scale)[0]) * np.ravel(wq.scale).astype(np.float32))

    def run(self, x_u8: np.ndarray) -> np.ndarray:
        n, c, h, w = x_u8.shape
        cols = x_u8.transpose(0, 2, 3, 1).reshape(-1, c)  # (N*H*W, C)
        acc = saturating_pair_dot(cols, self.w).astype(np.int64)
        acc += self.b[None, :] - self.x_zp * self.w.astype(np.int64).sum(axis=1)[None, :]
        y = np.rint(acc.astype(np.float64) * self.acc_scale / self.y_scale) + self.y_zp
        y = np.clip(y, 0, 255).astype(np.uint8)
        return y.reshape(n, h, w, -1).transpose(0, 3, 1, 2)


class SaturatingSession:
    """An ONNX Runtime session whose 1x1 INT8 convolutions compute as AVX2 without VNNI does."""

    def __init__(self, real, float_model: onnx.ModelProto, plan: QuantPlan) -> None:
        self.real = real
        g = GraphIndex(float_model)
        self.layers = [
            _PointwiseConv(n, g, plan) for n in float_model.graph.node
            if n.op_type == "Conv" and n.name in plan.nodes and plan.nodes[n.name].precision == "int8"
            and g.constant(n.input[1]).shape[2:] == (1, 1) and n.output[0] in plan.tensors
            and len(n.input) > 2 and n.input[2] in plan.tensors]

    def run(self, names, feeds):
        out = dict(zip(names, self.real.run(names, feeds)))
        for layer in self.layers:
            xi, yi = deployed_integer_output(layer.x), deployed_integer_output(layer.y)
            if xi in out and yi in out:
                out[yi] = layer.run(out[xi])
        return [out[n] for n in names]

    def __getattr__(self, name):
        return getattr(self.real, name)
