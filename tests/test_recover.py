"""Recover (label-free distillation after PTQ): it brings a quantized model's decisions closer to its
float teacher's on data it never saw, trains only on the training slice, and keeps its budget."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch

from lowbit.errors import ConfigError, DataError
from lowbit.recover import Recover, parse_budget

N_CLASSES = 6


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3x16x16 images whose class is the orientation and colour of a noisy stripe pattern."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16].astype(np.float32)
    y = rng.integers(0, N_CLASSES, n)
    x = np.empty((n, 3, 16, 16), np.float32)
    for i, c in enumerate(y):
        angle = (c % 3) * np.pi / 3 + rng.normal(0, 0.25)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0.6, 1.2) + rng.uniform(0, 6.28))
        colour = np.eye(3, dtype=np.float32)[c // 3] + rng.uniform(0, 0.6, 3).astype(np.float32)
        x[i] = colour[:, None, None] * wave + rng.normal(0, 0.4, (3, 16, 16))
    return x, y


@pytest.fixture(scope="module")
def teacher_onnx() -> onnx.ModelProto:
    return trained_teacher()


def trained_teacher() -> onnx.ModelProto:
    """A small CNN trained on the stripe task (a real, converged float model, not random weights)."""
    from torch import nn

    from lowbit.load.model import export_torch

    torch.set_num_threads(1)  # tiny tensors: more threads only contend
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
                          nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, N_CLASSES))
    x, y = _images(1024, seed=0)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        idx = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return export_torch(model, x[:1])


def _w4_config():
    from lowbit import PerChannel, PerTensor, QuantConfig, Scheme, int4, uint8

    return QuantConfig(weights=Scheme(int4, PerChannel(axis=0), symmetric=True),
                       activations=Scheme(uint8, PerTensor(), symmetric=False))


def _agreement(teacher: onnx.ModelProto, student: onnx.ModelProto, x: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, mean KL(teacher || student)) on `x`."""
    import onnxruntime as ort

    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (teacher, student)]
    a, b = (torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x})[0]) for s in run)
    kl = torch.nn.functional.kl_div(b.log_softmax(1), a.log_softmax(1), log_target=True, reduction="batchmean")
    return float((a.argmax(1) == b.argmax(1)).float().mean()), float(kl)


def test_budget_parsing_and_options_say_what_is_wrong():
    assert parse_budget("10m") == (600.0, None)
    assert parse_budget("90s") == (90.0, None)
    assert parse_budget("500steps") == (None, 500)
    for bad in ("ten minutes", "0s", "1.5steps", ""):
        with pytest.raises(ConfigError, match="budget"):
            parse_budget(bad)
    with pytest.raises(ConfigError, match="holdout"):
        Recover(holdout=0.0)
    with pytest.raises(ConfigError, match="batch_size"):
        Recover(batch_size=0)
    with pytest.raises(ConfigError, match="jitter"):
        Recover(augment=True, jitter=1.5)
    with pytest.raises(ConfigError, match="augment=True"):
        Recover(jitter=0.2)


def test_augmentation_is_crops_and_flips_unless_jitter_is_asked_for():
    """Crops and flips resample the image (values stay inside its range, a constant image stays
    itself); colour jitter, off unless asked for, changes the same views' values."""
    from lowbit.recover.augment import augment_images

    opts = Recover(augment=True)
    assert opts.jitter == 0.0 and not Recover().augment
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    views = augment_images(x, torch.Generator().manual_seed(1))
    again = augment_images(x, torch.Generator().manual_seed(1))
    assert torch.equal(views, again) and views.shape == x.shape and not torch.equal(views, x)
    lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
    assert bool(((views.amin(dim=(1, 2, 3)) >= lo - 1e-6) & (views.amax(dim=(1, 2, 3)) <= hi + 1e-6)).all())
    constant = torch.full((4, 3, 32, 32), 0.3)
    assert torch.allclose(augment_images(constant, torch.Generator().manual_seed(2)), constant)
    jittered = augment_images(x, torch.Generator().manual_seed(1), jitter=0.5)
    assert not torch.allclose(jittered, views)


def test_recover_brings_w4a8_decisions_back_to_the_teacher(teacher_onnx):
    import lowbit

    torch.set_num_threads(1)
    calib, _ = _images(192, seed=1)
    unseen, _ = _images(400, seed=2)
    ptq = lowbit.quantize(teacher_onnx, _w4_config(), calib, verify=None)
    rec = lowbit.quantize(teacher_onnx, _w4_config(), calib, verify=None,
                          recover=Recover("80steps", batch_size=32, augment=False, eval_every=10, patience=100))
    (agree0, kl0), (agree1, kl1) = _agreement(teacher_onnx, ptq.model, unseen), _agreement(teacher_onnx, rec.model, unseen)
    info = rec.plan.config["recover"]
    assert info["held_out_after"]["score"] < 0.7 * info["held_out_before"]["score"]
    assert kl1 < 0.6 * kl0 and agree1 >= agree0, (agree0, kl0, agree1, kl1)
    # what ships is what trained: same kind of QDQ model, as small as PTQ's
    ops = lambda m: sorted({n.op_type for n in m.graph.node})  # noqa: E731
    assert ops(rec.model) == ops(ptq.model)
    weights = lambda m: sum(len(t.raw_data) for t in m.graph.initializer)  # noqa: E731 - metadata grows
    assert weights(rec.model) == weights(ptq.model)


def _setup_run(teacher_onnx, calib: np.ndarray):
    import lowbit
    from lowbit.qat.graph import QATGraph
    from lowbit.recover.data import split
    from lowbit.recover.teacher import Teacher

    ptq = lowbit.quantize(teacher_onnx, _w4_config(), calib, verify=None)
    qat = QATGraph(ptq.float_model, ptq.plan)
    teacher = Teacher(teacher_onnx, qat.output_names, 1)
    return qat, teacher, split({qat.input_names[0]: calib}, 0.25, 0)


def test_held_out_slice_is_never_trained_on_and_step_budget_holds(teacher_onnx):
    from lowbit.recover.loop import run

    torch.set_num_threads(1)
    calib, _ = _images(64, seed=3)
    qat, teacher, data = _setup_run(teacher_onnx, calib)
    held = {r.tobytes() for r in data.held.groups[0][qat.input_names[0]]}
    train = {r.tobytes() for r in data.train.groups[0][qat.input_names[0]]}
    assert len(held) == 16 and not held & train and len(held | train) == 64
    seen: list[np.ndarray] = []

    class Spy:
        def __call__(self, feeds, batch=32):
            seen.append(next(iter(feeds.values())))
            return teacher(feeds, batch)

    hist = run(qat, Spy(), data, Recover("7steps", batch_size=8, augment=False, eval_every=3))
    assert hist.steps == 7 and hist.stopped == "budget"
    assert len(seen) == 1 + 7  # the held-out targets once, then one batch per step
    assert all(r.tobytes() in train for batch in seen[1:] for r in batch)
    assert hist.best_step in (0, 3, 6, 7)


def test_time_budget_holds(teacher_onnx):
    from lowbit.recover.loop import run

    torch.set_num_threads(1)
    calib, _ = _images(64, seed=4)
    qat, teacher, data = _setup_run(teacher_onnx, calib)
    t = time.perf_counter()
    hist = run(qat, teacher, data, Recover("2s", batch_size=8, eval_every=5, patience=1000))
    assert hist.stopped == "budget" and hist.steps > 5
    assert time.perf_counter() - t < 2.0 + 1.5  # the budget, plus at most one step and one evaluation


def test_too_little_data_is_a_clear_error(teacher_onnx):
    import lowbit

    calib, _ = _images(24, seed=5)
    with pytest.raises(DataError, match="at least 32 calibration samples"):
        lowbit.quantize(teacher_onnx, _w4_config(), calib, verify=None, recover=Recover("5steps"))


def test_qat_graph_runs_a_transformer_encoder_as_onnx_runtime_does():
    """Embeddings (Gather), positions (Range/Slice), the attention mask (Cast/Where/Expand), layer norm,
    erf GELU and softmax: the float graph in torch equals ONNX Runtime."""
    import onnxruntime as ort
    from torch import nn

    from lowbit.load.model import export_torch
    from lowbit.plan.quant_plan import QuantPlan
    from lowbit.load.prepare import prepare
    from lowbit.load.model import load_model
    from lowbit.qat.graph import QATGraph

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(50, 16), nn.Embedding(32, 16)
            self.ln1, self.ln2 = nn.LayerNorm(16), nn.LayerNorm(16)
            self.qkv, self.out, self.ff = nn.Linear(16, 48), nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, ids, mask):
            pos = torch.arange(ids.shape[1]).unsqueeze(0)
            h = self.ln1(self.tok(ids) + self.pos(pos))
            q, k, v = self.qkv(h).split(16, -1)
            b, t = ids.shape
            q, k, v = (z.reshape(b, t, 2, 8).transpose(1, 2) for z in (q, k, v))
            bias = torch.where(mask.bool()[:, None, None, :], 0.0, -1e4)
            att = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5 + bias, -1)
            h = self.ln2(h + self.out((att @ v).transpose(1, 2).reshape(b, t, 16)))
            return h + nn.functional.gelu(self.ff(h))

    torch.manual_seed(0)
    ids, mask = torch.randint(0, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    proto = prepare(load_model(export_torch(Encoder().eval(), (ids, mask)))).proto
    q = QATGraph(proto, QuantPlan("int8")).eval()
    feeds = dict(zip(q.input_names, (ids.numpy(), mask.numpy())))
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        got = q(*[torch.from_numpy(feeds[n]) for n in q.input_names]).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_qat_graph_runs_a_detector_neck_as_onnx_runtime_does():
    """YOLO-style ops: Split, nearest Resize (Upsample), Concat, MaxPool, Sigmoid-gated activations."""
    import onnxruntime as ort
    from torch import nn

    from lowbit.load.model import export_torch, load_model
    from lowbit.plan.quant_plan import QuantPlan
    from lowbit.load.prepare import prepare
    from lowbit.qat.graph import QATGraph

    class Neck(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1)
            self.up, self.pool = nn.Upsample(scale_factor=2, mode="nearest"), nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            h = self.a(x)
            h = h * torch.sigmoid(h)
            p, q = h.split(4, 1)
            y = torch.cat([self.up(self.b(h)), self.up(torch.cat([p, self.pool(q)], 1))], 1)
            return torch.softmax(y.flatten(2), -1)

    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    proto = prepare(load_model(export_torch(Neck().eval(), x))).proto
    q = QATGraph(proto, QuantPlan("int8")).eval()
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {q.input_names[0]: x.numpy()})[0]
    with torch.no_grad():
        got = q(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_recover_where_it_cannot_apply_is_refused_before_any_work(teacher_onnx, tmp_path):
    """fp16 / int8-dynamic / int4 have no fake-quant plan to train and a re-applied plan is not
    trained: each is a ConfigError naming what would work, raised before calibration (no data is
    needed to get it) and before any output is written."""
    import lowbit
    from lowbit.cli.commands import main

    for preset in ("fp16", "int8-dynamic", "int4"):
        with pytest.raises(ConfigError, match=f"presets int8, int8-fast, w4a8.*precision '{preset}'"):
            lowbit.quantize(teacher_onnx, preset, None, verify=None, recover=Recover("5steps"))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text("{}")
    with pytest.raises(ConfigError, match="re-applied as it is"):
        lowbit.quantize(teacher_onnx, "int8", None, plan=plan_file, verify=None, recover="5steps")
    with pytest.raises(ConfigError, match="budget such as '10m'"):
        lowbit.quantize(teacher_onnx, "int8", None, verify=None, recover=10)
    with pytest.raises(ConfigError, match="recovery budget"):
        lowbit.quantize(teacher_onnx, "int8", None, verify=None, recover="ten minutes")
    model = tmp_path / "m.onnx"
    onnx.save(teacher_onnx, str(model))
    out = tmp_path / "out.onnx"
    assert main(["quantize", str(model), "--precision", "fp16", "--recover", "5steps", "-o", str(out)]) == 2
    assert not out.exists()


def test_a_budget_string_is_a_recover(teacher_onnx):
    import lowbit

    calib, _ = _images(64, seed=6)
    result = lowbit.quantize(teacher_onnx, "int8-fast", calib, verify=None, recover="3steps")
    assert result.plan.config["recover"]["budget"] == "3steps"
    assert result.plan.config["recover"]["steps"] == 3


def test_watched_tensors_are_the_graphs_own_and_feature_distillation_trains(teacher_onnx):
    """`features`: the QAT graph leaves the chosen intermediate tensors in `watched`, equal to ONNX
    Runtime's FP32 values when quantization is off; they are inputs of INT8 layers spread through the
    graph; training with them still lowers the held-out output loss, which alone picks the shipped state."""
    import lowbit
    import onnxruntime as ort
    from lowbit.onnx.session import with_outputs
    from lowbit.qat.graph import QATGraph
    from lowbit.recover.pipeline import feature_points

    calib, _ = _images(96, seed=7)
    ptq = lowbit.quantize(teacher_onnx, _w4_config(), calib, verify=None)
    all_points = feature_points(ptq.float_model, ptq.float_model, ptq.plan, 100)
    points = feature_points(ptq.float_model, ptq.float_model, ptq.plan, 2)
    assert len(all_points) >= 3 and len(points) == 2 and set(points) <= set(all_points)
    assert points[-1] == all_points[-1]  # the deepest layer's input is always watched
    int8_inputs = {n.input[0] for n in ptq.float_model.graph.node if ptq.plan.nodes.get(n.name) is not None
                   and ptq.plan.nodes[n.name].precision == "int8"}
    assert set(all_points) <= int8_inputs
    qat = QATGraph(ptq.float_model, ptq.plan, watch=points)
    qat.quantize_enabled = False
    with torch.no_grad():
        qat(torch.from_numpy(calib[:4]))
    sess = ort.InferenceSession(with_outputs(ptq.float_model, list(points)).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    ref = sess.run(list(points), {qat.input_names[0]: calib[:4]})
    for name, r in zip(points, ref):
        np.testing.assert_allclose(qat.watched[name].numpy(), r, rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="cannot watch"):
        QATGraph(ptq.float_model, ptq.plan, watch=("no_such_tensor",))
    with pytest.raises(ConfigError, match="features"):
        Recover(features=-1)
    rec = lowbit.quantize(teacher_onnx, _w4_config(), calib, verify=None,
                          recover=Recover("30steps", features=2, eval_every=10, patience=100))
    info = rec.plan.config["recover"]
    assert info["watched"] == list(points) and info["features"] == 2
    assert len(info["held_out_after"]["losses"]) == len(rec.model.graph.output)  # outputs only
    assert info["held_out_after"]["score"] < info["held_out_before"]["score"]


def test_max_drop_with_recover_searches_the_recovered_plan(teacher_onnx):
    """With an accuracy budget, recovery runs first and the precision search judges mixes of the
    recovered INT8 layers: the shipped plan carries the recovery record and the budget holds on the
    confirmation half."""
    import lowbit

    calib, _ = _images(128, seed=8)
    evaluation, _ = _images(800, seed=9)
    # no timings (objective 'size') and a fixed weight grid: the same search on every CPU
    config = _w4_config().with_(objective="size", target="avx2")
    result = lowbit.quantize(teacher_onnx, config, calib, eval_data=evaluation, max_drop=0.04,
                             recover=Recover("20steps", eval_every=5), verify=None)
    budget = result.report.data["budget"]
    assert result.plan.config["recover"]["steps"] == 20
    assert budget["met"] and budget["holdout_metric"] >= budget["floor"], budget


def test_max_drop_with_recover_recovers_mixes_with_fewer_float_layers(teacher_onnx, capsys):
    """With a budget and recover, the search's mix and mixes with fewer float layers (bisected) are
    each recovered, then judged: the shipped mix is the smallest recovered one within the budget on
    both halves. On this model at 0.3% the search keeps layers in float that recovery makes
    unnecessary, so fewer float layers ship, and the model written keeps the budget on the data."""
    import lowbit
    from lowbit.search.recovered import FLOAT_PRECISIONS

    calib, _ = _images(128, seed=8)
    evaluation, _ = _images(2000, seed=9)
    config = _w4_config().with_(objective="size", target="avx2")
    result = lowbit.quantize(teacher_onnx, config, calib, eval_data=evaluation, max_drop=0.003,
                             recover=Recover("20steps", eval_every=5), verify=None)
    search, budget = result.report.data["search"], result.report.data["budget"]
    mixes = search["recovered_mixes"]
    assert 1 <= len(mixes["tries"]) <= 3
    assert max(t["float_layers"] for t in mixes["tries"]) == mixes["search_float_layers"]  # its own mix first
    shipped = mixes["shipped_float_layers"]
    assert shipped is not None and shipped < mixes["search_float_layers"], mixes
    before = mixes["before_recovery"]["chosen"]["promoted"]
    floats = [n for n in before if result.plan.nodes[n].precision in FLOAT_PRECISIONS]
    assert len(floats) == shipped and set(search["chosen"]["promoted"]) >= set(floats)
    assert all(result.plan.nodes[n].precision == "int8" for n in before if before[n] in FLOAT_PRECISIONS
               and n not in floats)
    assert search["chosen"]["size_bytes"] < mixes["before_recovery"]["chosen"]["size_bytes"]
    assert budget["met"] and budget["holdout_metric"] >= budget["floor"], budget
    assert _agreement(teacher_onnx, result.model, evaluation)[0] >= budget["floor"] - 0.002  # as ONNX Runtime runs it
    from lowbit.cli.render import print_report

    print_report(result.report)  # the terminal report says what was tried and what shipped
    assert f"shipped the one with {shipped}" in " ".join(capsys.readouterr().out.split())


def test_a_graph_recovery_cannot_train_is_refused_before_calibration():
    """An operator with no torch version (here Sin after a Conv) is named before any stage runs,
    not after minutes of calibration."""
    import lowbit
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                               helper.make_node("Sin", ["c"], ["y"], name="sin")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    stages = []
    with pytest.raises(ConfigError, match="Sin.*Quantize without --recover"):
        lowbit.quantize(model, "int8", _images(64, seed=1)[0], recover="10steps", verify=None,
                        progress=lambda stage, done, total: stages.append(stage))
    assert "calibrate" not in stages and "clipping" not in stages, stages


def _stateful_lstm() -> onnx.ModelProto:
    """x [T, 8] -> Linear + ReLU -> LSTM carrying h, c [1, 1, 16] -> Linear -> sigmoid [T, 1], hn, cn:
    the shape of a streaming voice-activity model."""
    import io

    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.lstm, self.out = nn.Linear(8, 16), nn.LSTM(16, 16), nn.Linear(16, 1)

        def forward(self, x, h, c):
            y, (hn, cn) = self.lstm(torch.relu(self.inp(x)).unsqueeze(1), (h, c))
            return torch.sigmoid(self.out(y.squeeze(1))), hn, cn

    torch.manual_seed(0)
    buf = io.BytesIO()
    zeros = torch.zeros(1, 1, 16)
    torch.onnx.export(Net().eval(), (torch.randn(5, 8), zeros, zeros), buf, dynamo=False, opset_version=17,
                      input_names=["x", "h", "c"], output_names=["y", "hn", "cn"], dynamic_axes={"x": {0: "T"}, "y": {0: "T"}})
    return onnx.load_from_string(buf.getvalue())


def test_recover_trains_a_stateful_recurrent_model_call_by_call():
    """Stateful data (`stateful={"h": "hn", "c": "cn"}`): each call of each sequence is one training
    sample fed as it is, with the state the FP32 model carried into it (teacher forcing: a call's h
    is the hn FP32 computed on the call before); recovery trains on them (LSTM and all) and never
    ships worse than PTQ on its held-out calls. (That it helps: Silero VAD, test_recover_real.)"""
    import onnxruntime as ort

    import lowbit
    from lowbit.data.stateful import model_feeds
    from lowbit.load.model import load_model
    from lowbit.load.prepare import prepare
    from lowbit.recover.data import gather

    rng = np.random.default_rng(3)
    sequences = [{"x": np.cumsum(rng.normal(0, 0.5, (24, 8)), 0).astype(np.float32)} for _ in range(6)]
    model = _stateful_lstm()
    samples = gather(model_feeds(sequences, model, prepare(load_model(model)).inputs, stateful={"h": "hn", "c": "cn"}))
    assert not samples.stacked and len(samples) == 6 * 24  # one step per call: the state has no batch axis
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    calls = samples.take(range(24))  # the first sequence, in order
    assert not calls[0]["h"].any()  # a sequence starts from zeros
    for before, after in zip(calls, calls[1:]):
        _, hn, cn = sess.run(None, before)
        np.testing.assert_allclose(after["h"], hn, atol=1e-6)
        np.testing.assert_allclose(after["c"], cn, atol=1e-6)
    rec = lowbit.quantize(model, "int8", sequences * 2, stateful={"h": "hn", "c": "cn"}, verify=None,
                          recover=Recover("20steps", eval_every=5, patience=100, features=0))
    info = rec.plan.config["recover"]
    assert info["train_samples"] + info["held_out_samples"] == 12 * 24 and info["steps"] == 20
    assert len(info["held_out_after"]["losses"]) == 3  # y, hn, cn
    assert info["held_out_after"]["score"] <= info["held_out_before"]["score"]


def test_a_recovered_plan_reads_back_and_reapplies_only_to_its_float_model(teacher_onnx, tmp_path):
    """The plan in a recovered model's metadata passes the plan checks (it records what recovery did);
    re-applied to the recovered float model it gives the same model, while re-applying it to the
    original model is refused, naming recovery (its weights are the original ones, its step sizes
    were learned for others), even where no plan-stage algorithm changed the weights."""
    import lowbit
    from lowbit.emit.metadata import plan_from_model

    calib, _ = _images(64, seed=8)
    result = lowbit.quantize(teacher_onnx, "int8-fast", calib, verify=None,
                             recover=Recover("20steps", eval_every=2, patience=100))
    plan = plan_from_model(result.model)
    assert plan.config["recover"]["steps"] == 20 and not plan.config.get("algorithms")
    assert plan.config["recover"]["best_step"] > 0  # recovery changed the weights: the plan needs its float model
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    again = lowbit.quantize(result.float_model, plan=str(path), verify=None)
    assert again.model.SerializeToString() == result.model.SerializeToString()
    with pytest.raises(ConfigError, match=r"\(recover\).*--save-float-model"):
        lowbit.quantize(teacher_onnx, plan=str(path), verify=None)


def test_output_kinds_and_per_row_kl():
    """Logits (N, C): KL of the softmaxes; probability rows ((N, C) or per frame (N, T, C)): KL on the
    rows, averaged over frames; anything else: relative squared error. Zero exactly when equal."""
    from lowbit.recover.losses import kinds, output_loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, generator=gen)
    frames = torch.softmax(torch.randn(4, 5, 7, generator=gen), -1)
    boxes = torch.randn(4, 5, 7, generator=gen)
    assert kinds([logits, torch.softmax(logits, 1), frames, boxes]) == ["kl", "kl-rows", "kl-rows", "mse"]
    other = torch.softmax(torch.randn(4, 5, 7, generator=gen), -1)
    manual = (frames * (frames.log() - other.log())).sum(-1).mean()
    assert torch.allclose(output_loss("kl-rows", other, frames), manual, atol=1e-6)
    assert float(output_loss("kl-rows", frames, frames)) == pytest.approx(0.0, abs=1e-7)
    assert torch.allclose(output_loss("kl-rows", torch.softmax(logits * 0.5, 1), torch.softmax(logits, 1)),
                          output_loss("kl", logits * 0.5, logits), atol=1e-5)


def test_detection_head_loss_weighs_boxes_and_scores_alike():
    """A raw YOLO head (N, 4 + C, anchors): boxes in pixels beside class probabilities. Pooled, a
    pixel of box error outweighs every score falling by a tenth; the head's loss (the mean of the
    parts' relative errors) ranks them the other way, and is the pooled loss where the parts agree."""
    from lowbit.recover.losses import kinds, output_loss

    gen = torch.Generator().manual_seed(1)
    boxes = torch.rand(2, 4, 400, generator=gen) * 320
    scores = torch.sigmoid(torch.randn(2, 3, 400, generator=gen) * 3 - 4)
    head = torch.cat([boxes, scores], 1)
    assert kinds([head, head.transpose(1, 2)]) == ["head-rows", "head-columns"]
    scores_low = torch.cat([boxes, scores * 0.9], 1)
    boxes_off = torch.cat([boxes + torch.randn(boxes.shape, generator=gen), scores], 1)
    assert output_loss("mse", scores_low, head) < output_loss("mse", boxes_off, head)
    assert output_loss("head-rows", scores_low, head) > 10 * output_loss("head-rows", boxes_off, head)
    assert torch.allclose(output_loss("head-columns", scores_low.transpose(1, 2), head.transpose(1, 2)),
                          output_loss("head-rows", scores_low, head))
    assert float(output_loss("head-rows", head, head)) == 0.0


def test_importing_lowbit_shortens_openmp_spin_waits_unless_the_user_chose():
    """torch's OpenMP workers read GOMP_SPINCOUNT when torch loads: lowbit sets a short one first
    (a recovery sharing 2 cores with another process: 1.9 instead of 8.0 s per step), never over
    the user's own value."""
    import os
    import subprocess
    import sys

    probe = "import lowbit, os, torch; print(os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    got = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.split() == ["10000"]
    got = subprocess.run([sys.executable, "-c", probe], env={**env, "GOMP_SPINCOUNT": "50"}, capture_output=True,
                         text=True, check=True)
    assert got.stdout.split() == ["50"]
