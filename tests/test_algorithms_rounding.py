"""Contracts of the learned-rounding algorithms (AdaRound, GPTQ): they beat round-to-nearest on a
seeded layer, write weights exactly on the plan's grid, are deterministic, and export with parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit import PerChannel, QuantConfig, Scheme
from lowbit.algorithms import _layer_data as ld
from lowbit.algorithms.adaround import AdaRound, learn_rounding
from lowbit.algorithms.gptq import GPTQ, Hessian, gptq_round
from lowbit.api import VerifyOptions
from lowbit.core.dtypes import int4
from lowbit.core.granularity import PerGroup
from lowbit.core.qparams import QParams
from lowbit.onnx.graph import GraphIndex


@pytest.fixture(autouse=True)
def one_thread():
    """The layer-level functions use torch's thread setting; one thread keeps these tiny cases fast."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def correlated_layer(o: int = 16, k: int = 48, rows: int = 1024, seed: int = 0):
    """A weight (o, k) and inputs (rows, k) with strongly correlated features."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)).astype(np.float32) / np.sqrt(k)
    x = rng.normal(size=(rows, k)).astype(np.float32) @ mix + rng.normal(size=(rows, 1)).astype(np.float32)
    w = (0.1 * rng.normal(size=(o, k))).astype(np.float32)
    return w, x.astype(np.float32)


def output_mse(w: np.ndarray, wq: np.ndarray, x: np.ndarray) -> float:
    return float(((x @ w.T - x @ wq.T) ** 2).mean())


def matrix(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(0)  # (O, K) -> (1, O, K): one group


@pytest.mark.parametrize("gran", [PerChannel(0), PerGroup(axis=1, size=16)])
def test_adaround_and_gptq_beat_round_to_nearest_at_4_bits(gran) -> None:
    w, x = correlated_layer()
    q = QParams.for_tensor(w, int4, gran, symmetric=True, narrow=True)
    s, z, qmin, qmax = ld.grid(q, w.shape)
    rtn = output_mse(w, q.fake_quantize(w), x)

    ada = ld.on_grid(q, learn_rounding(w, s, z, qmin, qmax, matrix, x[:, None], x[:, None], AdaRound(iterations=300)))
    hess = Hessian(np.zeros((1, w.shape[1], w.shape[1])))
    hess.add(x[:, None])
    gq = ld.on_grid(q, gptq_round(w[None], hess.value(), s[None], z[None], qmin, qmax, block_size=16)[0])
    for wq in (ada, gq):
        np.testing.assert_array_equal(q.fake_quantize(wq), wq)  # exactly on the plan's grid
    assert np.all(np.abs(ada - w) <= s * 1.0001)                # AdaRound: one of the two neighbours
    assert output_mse(w, ada, x) < 0.8 * rtn
    assert output_mse(w, gq, x) < 0.8 * rtn


def test_learn_rounding_is_deterministic() -> None:
    w, x = correlated_layer(8, 16, 256)
    q = QParams.for_tensor(w, int4, PerChannel(0), symmetric=True, narrow=True)
    s, z, qmin, qmax = ld.grid(q, w.shape)
    runs = [learn_rounding(w, s, z, qmin, qmax, matrix, x[:, None], x[:, None], AdaRound(iterations=60), seed=(3,))
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])


def test_gptq_act_order_and_groups() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 6, 9)).astype(np.float32)         # 4 groups (depthwise-like), 6 outputs
    x = rng.normal(size=(200, 4, 9)).astype(np.float32)
    hess = Hessian(np.zeros((4, 9, 9)))
    hess.add(x[:100])
    other = Hessian(np.zeros((4, 9, 9)))
    other.add(x[100:])
    full = Hessian(np.zeros((4, 9, 9)))
    full.add(x)
    np.testing.assert_allclose(hess.merge(other).value(), full.value(), rtol=1e-5, atol=1e-6)  # mergeable sums
    s = np.full(w.shape, 0.25, np.float32)
    z = np.zeros(w.shape, np.float32)
    for act in (False, True):
        ints = gptq_round(w, full.value(), s, z, -7, 7, block_size=4, act_order=act)
        assert ints.min() >= -7 and ints.max() <= 7
        err = np.einsum("rgk,gok->rgo", x, w - 0.25 * ints)
        rtn = np.einsum("rgk,gok->rgo", x, w - 0.25 * np.clip(np.rint(w / 0.25), -7, 7))
        assert (err**2).mean() < (rtn**2).mean()


def test_conv_rows_are_im2col_of_the_node_geometry() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, 9, 11)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
    layer = ld.Layer("c", "Conv", "w", "x", w, groups=2, kernel=(3, 2), stride=(2, 1), dilation=(1, 2),
                     pads=(1, 0, 2, 1))
    xp = torch.nn.functional.pad(torch.from_numpy(x), (0, 1, 1, 2))
    ref = torch.nn.functional.conv2d(xp, torch.from_numpy(w), stride=(2, 1), dilation=(1, 2), groups=2)
    pick = np.array([0, 5, layer.positions(x) - 1])
    rows = layer.rows(x, 1, pick)                                    # (3, G, K/G)
    got = torch.einsum("rgk,gok->rgo", torch.from_numpy(rows), layer.matrix(torch.from_numpy(w))).reshape(3, 4)
    np.testing.assert_allclose(got.numpy(), ref[1].reshape(4, -1).T[pick].numpy(), rtol=1e-5, atol=1e-5)
    gemm = ld.Layer("g", "Gemm", "w", "x", w.reshape(4, -1), trans_b=True, alpha=2.0)
    xg = rng.normal(size=(3, 18)).astype(np.float32)
    out = torch.einsum("rgk,gok->rgo", torch.from_numpy(gemm.rows(xg, 2, None)),
                       gemm.matrix(torch.from_numpy(gemm.w)))
    np.testing.assert_allclose(out.numpy().reshape(-1), 2.0 * xg[2] @ gemm.w.T, rtol=1e-5)


def tiny_convnet(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8, 3x3, stride 2) -> Relu -> grouped Conv(8->8, 3x3, groups 2): two quantized layers."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((0.3 * rng.normal(size=s)).astype(np.float32), n)
             for n, s in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (8, 4, 3, 3)), ("b2", (8,)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1], group=2)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def smooth_images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(n, 3, 4, 4)).astype(np.float32)
    return np.kron(low, np.ones((4, 4), np.float32)) + 0.1 * rng.normal(size=(n, 3, 16, 16)).astype(np.float32)


def weights_on_grid(result: lowbit.api.QuantResult) -> dict[str, np.ndarray]:
    g = GraphIndex(result.float_model)
    out = {}
    for name, t in result.plan.tensors.items():
        if t.role == "weight":
            w = g.constant(name)
            np.testing.assert_array_equal(t.qparams.fake_quantize(w), w)
            out[name] = w
    return out


@pytest.mark.parametrize("alg", [AdaRound(iterations=200, rows=512, threads=1), GPTQ(block_size=8, threads=1)])
def test_quantize_tiny_convnet_runs_with_parity(alg) -> None:
    model, calib, evaluation = tiny_convnet(), smooth_images(12, 1), smooth_images(8, 2)
    verify = VerifyOptions(threads=(), parity_batches=4)
    cfg = QuantConfig(objective="size", algorithms=(alg,))
    results = [lowbit.quantize(model, cfg, calib, eval_data=evaluation, verify=verify) for _ in range(2)]
    plain = lowbit.quantize(model, QuantConfig(objective="size"), calib, verify=None)
    assert sum(t.role == "weight" for t in plain.plan.tensors.values()) == 2  # both layers quantized
    for r in results:
        assert r.report.variants[1]["parity"]["passed"]
    first, second = weights_on_grid(results[0]), weights_on_grid(results[1])
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])   # deterministic for the seed
    rtn = {n: t.qparams.fake_quantize(GraphIndex(plain.float_model).constant(n)) for n, t in plain.plan.tensors.items()
           if t.role == "weight"}
    assert any(not np.array_equal(first[n], rtn[n]) for n in first)  # it did change some roundings



def test_gptq_leaves_convolutions_wider_than_max_columns_round_to_nearest() -> None:
    """conv1 reads 27 inputs per output, conv2 36: with max_columns 30 only conv1 is GPTQ-rounded
    (a K x K Hessian and its K^3 factorisation are what GPTQ costs), conv2 keeps nearest rounding."""
    model, calib = tiny_convnet(), smooth_images(12, 1)
    plain = lowbit.quantize(model, QuantConfig(objective="size"), calib, verify=None)
    capped = lowbit.quantize(model, QuantConfig(objective="size", algorithms=(GPTQ(block_size=8, max_columns=30),)),
                             calib, verify=None)
    before, after = GraphIndex(plain.float_model), GraphIndex(capped.float_model)
    assert np.array_equal(after.constant("w2"), before.constant("w2"))  # left to the emitter's nearest rounding
    w1 = after.constant("w1")
    assert np.array_equal(capped.plan.tensors["w1"].qparams.fake_quantize(w1), w1)  # GPTQ put it on its grid
    assert not np.array_equal(w1, plain.plan.tensors["w1"].qparams.fake_quantize(before.constant("w1")))
    with pytest.raises(lowbit.errors.ConfigError, match="max_columns"):
        GPTQ(max_columns=0)

def test_four_bit_plan_is_respected() -> None:
    model, calib = tiny_convnet(), smooth_images(12, 1)
    cfg = QuantConfig(objective="size", weights=Scheme(int4, PerChannel(0), symmetric=True),
                      algorithms=(AdaRound(iterations=50, asymmetric=False, threads=1),))
    r = lowbit.quantize(model, cfg, calib, verify=None)
    assert len(weights_on_grid(r)) == 2
    for w in weights_on_grid(r).values():
        assert len(np.unique(w[0])) <= 15                           # a 4-bit grid: at most 15 levels
