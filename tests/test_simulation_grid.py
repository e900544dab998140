"""The simulation (`emit_simulation`) puts every quantized activation on exactly the grid ONNX
Runtime's QuantizeLinear -> DequantizeLinear puts it on: same float32 values, ties and saturation
included. Plan choices and the parity check both read the simulation, so it must not drift."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowbit.core.dtypes import int8, uint8
from lowbit.core.granularity import PerChannel, PerTensor
from lowbit.core.qparams import QParams
from lowbit.emit.qdq import DQ_OUT, emit_forced_simulation, emit_qdq, emit_simulation
from lowbit.onnx.session import session, with_outputs
from lowbit.plan.quant_plan import NodePlan, QuantPlan, TensorPlan


def _matmul_plan(x_q: QParams) -> tuple:
    """x -> MatMul(w) -> y with x quantized by `x_q` and w per-channel int8."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    w_q = QParams.for_tensor(w, int8, PerChannel(1), True)
    plan = QuantPlan("int8", {"mm": NodePlan("mm", "MatMul", "int8", "test")},
                     {"x": TensorPlan("x", "activation", x_q, (-1.0, 1.0), "test"),
                      "w": TensorPlan("w", "weight", w_q, (float(w.min()), float(w.max())), "test")})
    return model, plan


def _grid_values(model, plan, x: np.ndarray, simulate: bool) -> np.ndarray:
    """What the model's MatMul reads for x: the dequantized activation, from ONNX Runtime without
    graph optimizations (so QuantizeLinear / DequantizeLinear run as themselves)."""
    built = emit_simulation(model, plan) if simulate else emit_qdq(model, plan)
    dq = next(o for n in built.graph.node for o in n.output if o.startswith("x") and o.endswith(DQ_OUT))
    return session(with_outputs(built, [dq]), optimize=False).run([dq], {"x": x})[0]


@pytest.mark.parametrize("x_q", [QParams.from_range(-0.7, 2.3, uint8, PerTensor(), False),
                                 QParams.from_range(-1.9, 1.9, int8, PerTensor(), True)],
                         ids=["uint8-asymmetric", "int8-symmetric"])
def test_simulated_activations_are_onnx_runtimes_grid_values(x_q):
    scale, zp = float(x_q.scale), float(x_q.zero_point)
    lo, hi = x_q.dtype.bounds(x_q.narrow)
    k = np.arange(lo - zp - 3, hi - zp + 3, dtype=np.float32)
    # grid points, exact ties between them (round half to even decides), values beyond both ends
    x = np.concatenate([np.float32([-1e30, 1e30]), k * np.float32(scale), (k + np.float32(0.5)) * np.float32(scale),
                        np.random.default_rng(1).normal(scale=3.0, size=400).astype(np.float32)])
    x = x[: len(x) // 8 * 8].reshape(-1, 8)  # the extremes come first: the cut only drops random values
    model, plan = _matmul_plan(x_q)
    simulated = _grid_values(model, plan, x, simulate=True)
    assert np.array_equal(simulated, x_q.fake_quantize(x))
    assert np.array_equal(simulated, _grid_values(model, plan, x, simulate=False))
    assert simulated.max() == np.float32((hi - zp) * np.float32(scale))  # saturated, not wrapped


def test_forced_simulation_exposes_the_integers_as_quantize_linear_writes_them():
    x_q = QParams.from_range(-0.7, 2.3, uint8, PerTensor(), False)
    model, plan = _matmul_plan(x_q)
    forced, names = emit_forced_simulation(model, plan)
    forced_input, integers = names["x"]
    x = np.random.default_rng(2).normal(size=(16, 8)).astype(np.float32)
    got = session(forced, optimize=False).run([integers], {"x": x, forced_input: x_q.quantize(x).astype(np.float32)})[0]
    assert np.array_equal(got, x_q.quantize(x).astype(np.float32))
