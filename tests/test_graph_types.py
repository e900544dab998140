"""Typed graph handling: only float tensors are observed or quantized; shape and index
subgraphs (int64 arithmetic feeding a Reshape, as exporters write for YOLO heads) stay untouched."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.onnx.session import session


def _dynamic_reshape_model() -> onnx.ModelProto:
    """x -> Conv -> Reshape(to [N, -1], the shape computed from Shape/Gather/Concat) -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(size=(4, 8 * 6 * 6)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
             helper.make_node("Concat", ["n", "minus_one"], ["to"], name="concat", axis=0),
             helper.make_node("Reshape", ["r", "to"], ["flat"], name="reshape"),
             helper.make_node("Gemm", ["flat", "fc"], ["y"], name="gemm", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_int64_shape_subgraph_is_neither_observed_nor_quantized():
    m = _dynamic_reshape_model()
    x = np.random.default_rng(1).normal(size=(16, 3, 8, 8)).astype(np.float32)
    for preset in ("int8", "int8-fast", "w4a8"):
        r = lowbit.quantize(m, preset, list(x), verify=None)
        assert "to" not in r.plan.tensors and "s" not in r.plan.tensors, preset
        assert all(r.plan.nodes[n].precision == "fp32" for n in ("shape", "batch", "concat")), preset
        assert r.plan.nodes["reshape"].precision == "int8"  # moves the conv's integers
        y = session(r.model).run(None, {"x": x})[0]
        ref = session(m).run(None, {"x": x})[0]
        assert y.shape == ref.shape and np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.9, preset
