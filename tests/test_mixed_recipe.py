"""Mixed recipe (lowbit.plan.recipes): a CNN with transformer blocks gets static INT8 convolutions and
the transformer recipe on the blocks' linear layers, in one plan; real PP-OCRv4 recognizer bar
under @pytest.mark.slow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from lowbit.api import make_plan
from lowbit.data import as_feeds, specs_from_onnx
from lowbit.emit import emit_qdq
from lowbit.load.model import load_model
from lowbit.load.prepare import prepare
from lowbit.plan.clipping import output_sqnr
from lowbit.plan.recipes import BLOCK_FLOAT_REASON, block_region, is_hybrid
from lowbit.presets import preset, resolve_transformer
from lowbit.transformers.patterns import FLOAT_REASONS, find_patterns

C, HEADS, FF, CLASSES = 32, 4, 64, 20


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Written out as Paddle exports it (opset < 17): mean, Sub, Pow, mean, Add eps, Sqrt, Div."""
    d = x - x.mean(-1, keepdim=True)
    return d / torch.sqrt(d.pow(2).mean(-1, keepdim=True) + 1e-5) * w + b


class Block(nn.Module):
    """Pre-norm SVTR-style block: fused QKV, softmax attention, swish FFN, residual adds."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc1, self.fc2 = nn.Linear(C, FF), nn.Linear(FF, C)
        self.n1w, self.n1b = nn.Parameter(torch.ones(C)), nn.Parameter(torch.zeros(C))
        self.n2w, self.n2b = nn.Parameter(torch.ones(C)), nn.Parameter(torch.zeros(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(layer_norm(x, self.n1w, self.n1b)).reshape(b, t, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        att = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) * (C // HEADS) ** -0.5, dim=-1)
        x = x + self.proj((att @ qkv[2]).transpose(1, 2).reshape(b, t, C))
        h = self.fc1(layer_norm(x, self.n2w, self.n2b))
        return x + self.fc2(h * torch.sigmoid(h))


class Hybrid(nn.Module):
    """Conv stack -> columns as a sequence -> two blocks -> linear head (CTC-like logits)."""

    def __init__(self) -> None:
        super().__init__()
        layers, c_in = [], 3
        for c in (16, 32, C):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d((1, None)))
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(C, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.convs(x).squeeze(2).transpose(1, 2)  # (B, W, C)
        return torch.softmax(self.head(self.blocks(seq)), dim=-1)


def export(net: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    torch.manual_seed(0)
    net.eval()
    for m in net.modules():  # non-trivial BN statistics, so folding changes the weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(*shape),), buf, input_names=["x"], output_names=["y"],
                      opset_version=13, dynamo=False)
    return prepare(load_model(onnx.load_from_string(buf.getvalue()))).proto


SHAPE = (1, 3, 8, 32)


@pytest.fixture(scope="module")
def hybrid() -> onnx.ModelProto:
    torch.manual_seed(0)
    return export(Hybrid(), SHAPE)


def images(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(n)]


def run(model: onnx.ModelProto, feeds: list[dict]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [sess.run(None, f)[0] for f in feeds]


def test_decomposed_layer_norms_and_blocks_are_found(hybrid):
    p = find_patterns(hybrid)
    ops = {n.name: n.op_type for n in hybrid.graph.node}
    assert sorted(ops[n] for n in p.layernorm if ops[n] in ("Sqrt", "ReduceMean")) == ["ReduceMean"] * 8 + ["Sqrt"] * 4
    assert p.is_transformer() and is_hybrid(hybrid, p)
    linears, floats = block_region(hybrid, p)
    assert len(linears) == 8 and all(ops[n] in ("MatMul", "Gemm") for n in linears)  # qkv, proj, fc1, fc2 x 2
    head = [n for n in p.linear if n not in linears]
    assert len(head) == 1  # the head after the blocks' last residual keeps the CNN recipe
    assert all(ops[n] not in ("Conv",) for n in floats)
    assert sum(ops[n] == "Softmax" for n in floats) == 2  # attention softmaxes, not the output one


def test_recipes_are_resolved_per_graph(hybrid):
    from tests.test_transformers import tiny_model

    assert resolve_transformer(preset("int8"), hybrid).transformer == "mixed"
    pure = resolve_transformer(preset("int8"), tiny_model())
    assert pure.transformer is True and pure.to_dict() == preset("int8-transformer").to_dict()
    cnn = export(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)), SHAPE)
    assert resolve_transformer(preset("int8"), cnn).to_dict() == preset("int8").with_(transformer=False).to_dict()


@pytest.fixture(scope="module")
def mixed(hybrid):
    calib = images(32, 0)
    cfg = preset("int8").with_(objective="size")  # no timing-dependent choices in a test
    model, plan = make_plan(prepare(load_model(hybrid)), cfg, as_feeds(calib, specs_from_onnx(hybrid)))
    return model, plan


def test_each_region_gets_its_recipe(hybrid, mixed):
    model, plan = mixed
    ops = {n.name: n for n in model.graph.node}
    linears, floats = block_region(model)
    assert plan.config["transformer"] == "mixed"
    convs = [n for n in plan.nodes.values() if n.op == "Conv"]
    assert len(convs) == 3 and all(n.precision == "int8" and n.reason.startswith("integer kernel") for n in convs)
    measured = {n for n in plan.decisions.get("float_choice", {}).get("layers", [])}  # lowbit.search.float_choice
    assert len(measured) <= 2
    for name in linears:
        node, np_ = ops[name], plan.nodes[name]
        if name in measured:
            assert np_.precision == "fp16" and "float_choice" in np_.reason, np_
            continue
        assert np_.precision == "int8" and "transformer recipe" in np_.reason, np_
        x = plan.tensors[node.input[0]]
        root = plan.tensors[x.method[len("shared:"):]] if x.method.startswith("shared:") else x
        assert root.method == "mse" and x.qparams.scale == root.qparams.scale  # transformer recipe's ranges
        assert node.output[0] not in plan.tensors  # float output: MatMulIntegerToFloat
    attention = find_patterns(model).attention
    assert len(attention) == 4 and all(plan.nodes[n].reason == FLOAT_REASONS["attention"] for n in attention)
    reasons = set(FLOAT_REASONS.values()) | {BLOCK_FLOAT_REASON}
    for name in floats:  # float with the transformer recipe's reason, or a Reshape moving a linear's input
        n = plan.nodes[name]
        measured_io = "float_choice" in n.reason or n.reason == "no integer neighbour"  # around a measured choice
        assert (n.precision == "fp32" and (n.reason in reasons or measured_io)) or n.reason == "moves integers with its input's scale", n


def test_mixed_is_closer_to_fp32_than_int8_fast(hybrid, mixed):
    model, plan = mixed
    held = images(16, 1)
    ref = run(hybrid, held)
    fast_model, fast_plan = make_plan(prepare(load_model(hybrid)), preset("int8-fast").with_(objective="size"),
                                      as_feeds(images(32, 0), specs_from_onnx(hybrid)))
    s_mixed = output_sqnr(ref, run(emit_qdq(model, plan), held))
    s_fast = output_sqnr(ref, run(emit_qdq(fast_model, fast_plan), held))
    assert s_mixed > s_fast + 1.0, (s_mixed, s_fast)


def test_float_prefix_takes_the_closest_plan_only_past_the_margin(hybrid, mixed):
    from lowbit.search.float_prefix import choose_float_prefix

    model, plan = mixed
    calib = as_feeds(images(32, 0), specs_from_onnx(hybrid))
    out, record = choose_float_prefix(model, plan, calib, budget=0.5)
    sqnr, k = record["sqnr_db"], record["chosen"]
    assert len(sqnr) >= 3  # the all-INT8 plan and at least the first two convolutions
    if k:
        assert sqnr[str(k)] == max(sqnr.values()) and sqnr[str(k)] > sqnr["0"] + record["margin_db"]
        assert all(out.nodes[n].precision == "fp32" and "float_prefix" in out.nodes[n].reason for n in record["layers"])
    else:
        assert max(sqnr.values()) <= sqnr["0"] + record["margin_db"] and out is plan
    assert all(plan.nodes[n].precision == "int8" for n in record["layers"])  # the base plan is not changed


ZOO_REC = Path(__file__).resolve().parents[1] / ".cache/zoo/models/ppocrv4-rec/ch_PP-OCRv4_rec_infer.onnx"
ZOO_RUNS = Path(__file__).resolve().parents[1] / ".cache/zoo/runs/ppocrv4-rec"


@pytest.mark.slow
@pytest.mark.skipif(not (ZOO_REC.exists() and (ZOO_RUNS / "eval.npz").exists()), reason="zoo cache lacks ppocrv4-rec")
def test_ppocrv4_rec_int8_bar(tmp_path):
    import lowbit
    from lowbit.metrics import METRICS

    calib = np.load(ZOO_RUNS / "calib.npz")["x"]
    ev = np.load(ZOO_RUNS / "eval.npz")
    runs = [{"x": ev[k]} for k in sorted(ev.files, key=lambda k: int(k.split("/")[0]))]
    out = tmp_path / "rec.int8.onnx"
    result = lowbit.quantize(str(ZOO_REC), "int8", {"x": calib}, output=str(out), verify=None)
    ref = np.concatenate(run(onnx.load(str(ZOO_REC)), runs))
    got = np.concatenate(run(onnx.load(str(out)), runs))
    assert METRICS.create("ctc-exact").score(ref, got) >= MIN_STRINGS
    check = result.report.data["fidelity_check"]
    assert check["decisions_kept"] < check["decision_floor"] and check["shipped"] == "weight-only", check
    choice = result.plan.decisions["float_choice"]  # recorded; it only ever moves closer to FP32 on calibration
    assert choice["sqnr_db"] >= choice["base_sqnr_db"] and choice["weight_share"] <= choice["budget_share"]
    assert out.stat().st_size <= MAX_SIZE * ZOO_REC.stat().st_size


# issue 16's bar. The static INT8 plan keeps 0.927 at 0.294 (VNNI's 8-bit weight grid; 0.753 with
# AVX2's), changing every argmax of only 56% of the calibration lines; the fidelity guard ships its
# GPTQ-rounded weight-only form, 0.987 at 0.277 on either target (2026-12-06, this machine).
MIN_STRINGS, MAX_SIZE = 0.97, 0.35


def test_float_prefix_is_also_tried_with_float_elementwise(monkeypatch):
    """Float elementwise arithmetic and float first layers can each hide the other's gain (PP-OCRv3's
    recognizer: 6.8 dB with either alone, 21 dB together): the prefix is also chosen on the
    float-elementwise plan, which wins only when clearly closer."""
    from types import SimpleNamespace

    from lowbit.plan import calibrate as cal
    from lowbit.plan.decisions import Decisions

    int8_plan, alt = object(), object()
    alt_out = SimpleNamespace(decisions=Decisions())
    choice = {"float": False, "sqnr_int8_db": 6.8, "sqnr_float_db": 6.81}
    prefix = {"sqnr_db": {"0": 6.8, "3": 7.1}, "chosen": 0}

    def fake_prefix(model, plan, calib, known_db=None):
        return alt_out, {"sqnr_db": {"0": 6.81, "9": gain}, "chosen": 9}

    monkeypatch.setattr(cal, "choose_float_prefix", fake_prefix)
    gain = 21.2
    plan, rec = cal._prefix_with_float_elementwise(None, int8_plan, prefix, alt, choice, {"chosen": 99.99}, [])
    assert plan is alt_out and rec["chosen"] == 9
    assert plan.decisions.elementwise_choice["float"] and plan.decisions.elementwise_choice["with_float_prefix_db"] == 21.2
    gain = 7.9  # within the margin of the INT8-elementwise plan's best prefix (7.1 + 1.0)
    plan, rec = cal._prefix_with_float_elementwise(None, int8_plan, prefix, alt, choice, {"chosen": 99.99}, [])
    assert plan is int8_plan and rec is prefix
