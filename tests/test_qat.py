"""Contracts of lowbit.qat: the fake-quant arithmetic is QuantizeLinear's, STE / LSQ gradients are
the papers', the QAT module computes exactly the plan's simulation, export ships lowbit's QDQ
format within one output step of the module, and QAT beats PTQ at 4 bits on Fashion-MNIST."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lowbit
import lowbit.qat as Q
from lowbit import PerChannel, QuantConfig, Scheme, int4
from lowbit.core import dtype_by_name, fake_quantize as np_fake_quantize
from lowbit.demo.datasets import fashion_mnist
from lowbit.errors import ConfigError, DataError
from lowbit.qat.fake_quant import FakeQuant, fake_quantize

W4A8 = QuantConfig(weights=Scheme(int4, PerChannel(0), symmetric=True))


def _data(n: int, seed: int) -> np.ndarray:
    from conftest import image_like

    return np.stack(image_like(n, seed))


# --- the arithmetic -----------------------------------------------------------------------------
def test_fake_quantize_is_quantizelinear_bit_for_bit():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=4000).astype(np.float32) * 3, np.arange(-20, 20, 0.5, dtype=np.float32) * 0.1])
    scale, zp = np.float32(0.1), 3  # ties at x/scale = k + 0.5 round half to even, as ONNX does
    ours = fake_quantize(torch.from_numpy(x), torch.tensor(scale), torch.tensor(float(zp)), 0, 255).numpy()
    ref = np_fake_quantize(x, scale, np.int64(zp), dtype_by_name("uint8"))
    np.testing.assert_array_equal(ours, ref)


def test_ste_gradient_passes_inside_and_stops_outside_the_grid():
    x = torch.tensor([-5.0, -0.3, 0.0, 0.26, 1.0, 9.0], requires_grad=True)
    fake_quantize(x, torch.tensor(0.1), torch.tensor(0.0), -10, 10).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_lsq_step_gradient_is_the_papers():
    from lowbit.core import QParams, PerTensor

    q = QParams(dtype_by_name("int8"), PerTensor(), np.float32(0.1), np.int64(0), narrow=True)
    fq = FakeQuant(q, learn_scale=True, activation=True).train()
    x = torch.tensor([[0.234, -0.51, 20.0, -20.0]])
    fq(x).sum().backward()
    s, qp = 0.1, 127
    v = x / s
    inside = torch.round(v) - v
    expected = torch.where(v > qp, torch.tensor(float(qp)), torch.where(v < -qp, torch.tensor(-float(qp)), inside))
    g = 1 / np.sqrt(x[0].numel() * qp)
    assert torch.allclose(fq.scale.grad, expected.sum() * g, rtol=1e-4)


# --- the module is the plan -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_qat(small_model_torch):
    return Q.prepare(small_model_torch, QuantConfig(target="avx2"), _data(24, 1), example_inputs=torch.zeros(1, 3, 32, 32))


def test_qat_module_computes_the_plans_simulation(small_qat):
    import onnxruntime as ort

    from lowbit.emit.qdq import emit_simulation

    sim = emit_simulation(small_qat.proto, small_qat.plan)
    x = _data(8, 2)
    got = ort.InferenceSession(sim.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        ours = small_qat.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, got, atol=1e-4, rtol=1e-4)


def test_weights_follow_the_targets_grid(small_qat):
    """Saturating AVX2 target: 7-bit grids for non-depthwise layers, 8-bit for depthwise."""
    dtypes = {t.name: t.qparams.dtype.name for t in small_qat.plan.tensors.values() if t.role == "weight"}
    assert sorted(set(dtypes.values())) == ["int7", "int8"]
    fqs = [small_qat.quantizer(n) for n in dtypes]
    assert {f.qmax for f in fqs} == {63, 127}


def test_fit_export_parity_and_verify(small_model_torch, tmp_path):
    torch.manual_seed(0)
    x = torch.from_numpy(_data(64, 3))
    with torch.no_grad():
        y = small_model_torch(x).argmax(1)
    qat = Q.prepare(small_model_torch, W4A8, x[:24].numpy(), bn="batch", freeze_bn_after=4)
    before = {k: v.clone() for k, v in qat.state_dict().items() if k.endswith("scale")}
    hist = Q.fit(qat, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)], epochs=2, lr=1e-3, eval_data=[(x, y)])
    assert len(hist.history) == 2 and hist.accuracy is not None
    assert any(not torch.equal(before[k], qat.state_dict()[k]) for k in before)  # LSQ moved the steps
    out = Q.export(qat, x[:32], tmp_path / "qat.onnx")
    assert (tmp_path / "qat.onnx").is_file()
    ops = [n.op_type for n in out.model.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and "BatchNormalization" not in ops
    assert out.parity["output"]["max_steps"] <= 1.0
    assert {t.qparams.dtype.name for t in out.plan.tensors.values() if t.role == "weight"} == {"int4"}
    from lowbit.emit.metadata import plan_from_model
    from lowbit.verify import check_parity
    from lowbit.data import as_feeds, specs_from_onnx

    assert plan_from_model(out.model).tensors.keys() == out.plan.tensors.keys()
    parity = check_parity(out.model.SerializeToString(), out.float_model, out.plan,
                          as_feeds(x[32:].numpy(), specs_from_onnx(out.float_model), batch_size=16))
    assert parity["passed"], parity


def test_batch_bn_mode_starts_as_the_identity(small_model_torch):
    x = _data(24, 1)
    a = Q.prepare(small_model_torch, "int8", x).eval()
    b = Q.prepare(small_model_torch, "int8", x, bn="batch", freeze_bn_after=10).eval()
    assert len(b.bn_folds) == 3
    with torch.no_grad():
        ya, yb = a(torch.from_numpy(x)), b(torch.from_numpy(x))
    assert (ya.argmax(1) == yb.argmax(1)).float().mean() >= 0.9
    assert torch.allclose(ya, yb, atol=0.05 * float(ya.abs().max()))


def test_prepare_says_what_is_wrong(small_model_torch):
    with pytest.raises(ConfigError, match="calib_data"):
        Q.prepare(small_model_torch, "int8", None)
    with pytest.raises(ConfigError, match="freeze_bn_after"):
        Q.prepare(small_model_torch, "int8", _data(4, 0), bn="batch")
    with pytest.raises(ConfigError, match="precision"):
        Q.prepare(small_model_torch, "fp16", _data(4, 0))


def test_cli_qat_on_npz_and_onnx(small_model_path, small_model_torch, tmp_path):
    import argparse

    from lowbit.cli.qat import add_qat_parser, run_qat

    x = _data(48, 5)
    with torch.no_grad():
        y = small_model_torch(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(tmp_path / "train.npz", x=x[:32], y=y[:32])
    np.savez(tmp_path / "test.npz", images=x[32:], labels=y[32:])
    parser = argparse.ArgumentParser()
    add_qat_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["qat", str(small_model_path), "--train", str(tmp_path / "train.npz"),
                              "--eval", str(tmp_path / "test.npz"), "--weights", "int4", "--calib-n", "16",
                              "--batch-size", "16", "--threads", "", "-o", str(tmp_path / "m.qat.onnx"),
                              "--report-json", str(tmp_path / "r.json")])
    report = run_qat(args, lambda *a, **k: None)
    labels = [v["label"] for v in report.variants]
    assert labels == ["fp32", "ptq-w4a8", "qat-w4a8"]
    assert all(v["accuracy"] is not None for v in report.variants)
    assert report.variants[2]["parity"]["passed"]
    assert (tmp_path / "m.qat.onnx").is_file() and (tmp_path / "r.json").is_file()
    assert report.data["qat"]["history"][0]["epoch"] == 1


def test_cli_qat_checkpoint_needs_arch(tmp_path, small_model_torch):
    import argparse

    from lowbit.cli.qat import add_qat_parser, run_qat

    torch.save(small_model_torch.state_dict(), tmp_path / "m.pt")
    parser = argparse.ArgumentParser()
    add_qat_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["qat", str(tmp_path / "m.pt"), "--train", "x.npz", "--eval", "y.npz",
                              "-o", str(tmp_path / "o.onnx")])
    with pytest.raises(ConfigError, match="--arch"):
        run_qat(args, lambda *a, **k: None)
    args.arch, args.input_shape = "conftest:SmallConvNet", "3,32,32"
    with pytest.raises(DataError, match="x.npz"):
        run_qat(args, lambda *a, **k: None)  # the checkpoint loaded (weights_only); the data is missing


# --- the dataset reader ---------------------------------------------------------------------------
def test_idx_reader_checks_headers(tmp_path):
    good = tmp_path / "a-images-idx3-ubyte.gz"
    with gzip.open(good, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(2 * 784))
    assert fashion_mnist.read_idx(good, b"\x00\x00\x08\x03").shape == (2, 28, 28)
    with pytest.raises(DataError, match="magic"):
        fashion_mnist.read_idx(good, b"\x00\x00\x08\x01")
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(2 * 784))
    with pytest.raises(DataError, match="truncated"):
        fashion_mnist.read_idx(short, b"\x00\x00\x08\x03")
    with pytest.raises(DataError, match="data fetch fashion-mnist"):
        fashion_mnist.load("test", root=tmp_path / "nowhere")


# --- the real thing: Fashion-MNIST -----------------------------------------------------------------
needs_fmnist = pytest.mark.skipif(not fashion_mnist.available(),
                                  reason="Fashion-MNIST not installed: run scripts/setup_fashion_mnist.sh")


@pytest.mark.slow
@needs_fmnist
def test_fashion_mnist_qat_w4a8_beats_ptq_and_ships_exactly():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist"))
    from common import loader, onnx_accuracy, tensors
    from train_fp32 import train

    torch.manual_seed(0)
    model = train(1, limit=12000, log=lambda s: None)
    x_train, y_train = tensors("train", 12000)
    x_test, y_test = tensors("test", 3000)
    fp32 = onnx_accuracy(lowbit.load.model.export_torch(model, x_test[:1]), x_test, y_test)
    calib = x_train[:500].numpy()
    ptq = onnx_accuracy(lowbit.quantize(model, W4A8, calib, example_inputs=x_test[:1], verify=None).model,
                        x_test, y_test)
    qat = Q.prepare(model, W4A8, calib)
    Q.fit(qat, loader(x_train[:6000], y_train[:6000], 128, shuffle=True), epochs=1, lr=5e-4)
    fq = Q.evaluate(qat, [(x_test, y_test)])
    shipped = Q.export(qat, x_test[:500])
    ort_acc = onnx_accuracy(shipped.model, x_test, y_test)
    assert abs(ort_acc - fq) <= 0.1 + 1e-9, (ort_acc, fq)
    assert fq > ptq + 0.5, (fq, ptq, fp32)
    assert fq > fp32 - 2.0, (fq, fp32)


def test_fit_resumes_from_its_checkpoint(tmp_path):
    from lowbit.qat import fit

    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]

    def run(epochs):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(8, 2))
        return model, fit(model, data, epochs=epochs, lr=1e-2, schedule="constant",
                          checkpoint=str(tmp_path / "ckpt.pt"))

    m1, r1 = run(1)
    m2, r2 = run(2)  # resumes after epoch 1: trains only the second
    assert [h["epoch"] for h in r2.history] == [1, 2]
    torch.manual_seed(1)
    ref = torch.nn.Sequential(torch.nn.Linear(8, 2))
    fit(ref, data, epochs=2, lr=1e-2, schedule="constant")
    for a, b in zip(m2.state_dict().values(), ref.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
