"""Inputs whose samples are not on axis 0, constant inputs, and recurrent state carried through
calibration and evaluation (`lowbit.data.axes`, `lowbit.data.stateful`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.calibration.minmax import MinMax
from lowbit.cli.commands import main
from lowbit.data import InputSpec, as_feeds, specs_from_onnx
from lowbit.data.axes import parse_axis, resolve_batch_axes
from lowbit.errors import ConfigError, DataError
from lowbit.calibration.collect import collect_stats
from lowbit.onnx.session import session
from lowbit.data.stateful import model_feeds, parse_pairs
from lowbit.verify import compare_models

F, H = 64, 48
REPO = Path(__file__).resolve().parents[1]


def cell(batch: str | None = "B", seed: int = 0) -> onnx.ModelProto:
    """A Silero-like streaming cell: input [B, F], state [2, B, H], sr scalar int64 ->
    output [B, 1], stateN [2, B, H] = tanh(state * 0.9 + x @ Wx), output from stateN's mean * sr / 16000."""
    rng = np.random.default_rng(seed)
    b = batch or None
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (F, H)).astype(np.float32), "Wx"),
             numpy_helper.from_array(rng.normal(0, 0.5, (H, 1)).astype(np.float32), "Wo"),
             numpy_helper.from_array(np.array(0.9, np.float32), "decay"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.array(16000, np.float32), "sr0")]
    nodes = [
        helper.make_node("MatMul", ["input", "Wx"], ["xw"], name="mm_in"),
        helper.make_node("Unsqueeze", ["xw", "axis0"], ["xw3"], name="unsq"),
        helper.make_node("Mul", ["state", "decay"], ["kept"], name="decay_mul"),
        helper.make_node("Add", ["kept", "xw3"], ["pre"], name="add"),
        helper.make_node("Tanh", ["pre"], ["stateN"], name="tanh"),
        helper.make_node("ReduceMean", ["stateN"], ["mean"], axes=[0], keepdims=0, name="mean"),
        helper.make_node("MatMul", ["mean", "Wo"], ["o"], name="mm_out"),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Div", ["srf", "sr0"], ["gain"], name="div"),
        helper.make_node("Mul", ["o", "gain"], ["output"], name="gain_mul"),
    ]
    graph = helper.make_graph(
        nodes, "cell",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [b, F]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, b, H]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [b, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, b, H])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def utterances(n: int = 3, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (int(rng.integers(5, 12)), F)).astype(np.float32) for _ in range(n)]


# ---- batch axes -----------------------------------------------------------------------------
def test_batch_axis_inferred_from_shared_named_and_lone_dynamic_dims():
    assert [s.batch_axis for s in specs_from_onnx(cell("B"))] == [0, 1, None]
    assert [s.batch_axis for s in specs_from_onnx(cell(None))] == [0, 1, None]  # [2, ?, H]: axis 1
    fixed = [InputSpec("x", ("seq", 576)), InputSpec("h", (1, 1, 128))]
    assert [s.batch_axis for s in resolve_batch_axes(fixed)] == [0, 0]  # fully fixed: not for the graph to say
    assert [s.batch_axis for s in resolve_batch_axes(fixed, {"h": None})] == [0, None]
    assert resolve_batch_axes([InputSpec("s", (2, "n", 4))], {"s": -2})[0].batch_axis == 1


def test_state_on_axis_1_is_cut_and_stacked_on_axis_1_and_scalars_go_with_every_batch(tmp_path):
    specs = specs_from_onnx(cell())
    n = 5
    state = np.arange(2 * n * H, dtype=np.float32).reshape(2, n, H)
    data = {"input": np.arange(n * F, dtype=np.float32).reshape(n, F), "state": state, "sr": np.array(8000)}
    np.savez(tmp_path / "d.npz", **data)
    for source in (data, tmp_path / "d.npz", [{k: v for k, v in data.items()}]):
        batches = list(as_feeds(source, specs, batch_size=2))
        if len(batches) == 1:  # a list element is one user-made batch: kept whole
            assert batches[0].feeds["state"].shape == (2, n, H)
            continue
        assert [b.size for b in batches] == [2, 2, 1]
        np.testing.assert_array_equal(batches[1].feeds["state"], state[:, 2:4])
        assert all(b.feeds["sr"].shape == () and b.feeds["sr"] == 8000 for b in batches)
    # samples one at a time (a list of single samples): stacked on each input's own axis
    single = [{"input": data["input"][i], "state": state[:, i], "sr": np.array(8000)} for i in range(n)]
    stacked = list(as_feeds(single, specs, batch_size=3))
    np.testing.assert_array_equal(stacked[0].feeds["state"], state[:, :3])
    assert stacked[0].feeds["input"].shape == (3, F) and stacked[0].feeds["sr"].shape == ()


def test_mismatched_batch_sizes_name_the_axes_and_the_fix():
    specs = resolve_batch_axes(specs_from_onnx(cell()), {"state": 0})
    with pytest.raises(DataError, match=r"'state': 2 \(axis 0\).*--batch-axis name=1"):
        list(as_feeds({"input": np.zeros((5, F)), "state": np.zeros((2, 5, H)), "sr": np.array(1)}, specs))


@pytest.mark.parametrize("given, match", [
    ({"stat": 1}, r"'stat'.*no input.*state"),
    ({"state": 3}, r"batch axis 3 of 'state' is out of range.*rank 3"),
    ({"sr": 0}, r"'sr' is a scalar.*sr=none"),
    ({"state": "1"}, r"must be an int or None"),
])
def test_bad_batch_axes_are_config_errors(given, match):
    with pytest.raises(ConfigError, match=match):
        resolve_batch_axes(specs_from_onnx(cell()), given)


def test_parse_axis_and_pairs():
    assert parse_axis("state=1") == ("state", 1) and parse_axis("sr=none") == ("sr", None)
    for bad in ("state", "state=x", "=1"):
        with pytest.raises(ConfigError, match="batch-axis"):
            parse_axis(bad)
    assert parse_pairs(["h->hn,c->cn", "state=stateN"]) == {"h": "hn", "c": "cn", "state": "stateN"}
    with pytest.raises(ConfigError, match="INPUT->OUTPUT"):
        parse_pairs(["state"])


# ---- stateful calibration -------------------------------------------------------------------
def manual_loop(model: onnx.ModelProto, utts: list[np.ndarray], names: list[str], sr: int = 16000):
    """Each utterance chunk by chunk from a zero state, feeding stateN back: min/max of `names`."""
    from lowbit.onnx.session import with_outputs

    sess = session(with_outputs(model, names))
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    outs = []
    for u in utts:
        state = np.zeros((2, 1, H), np.float32)
        for chunk in u:
            vals = dict(zip(names + ["output", "stateN"], sess.run(names + ["output", "stateN"], {
                "input": chunk[None], "state": state, "sr": np.array(sr, np.int64)})))
            for n in names:
                lo[n], hi[n] = min(lo[n], float(vals[n].min())), max(hi[n], float(vals[n].max()))
            state = vals["stateN"]
            outs.append(vals["output"])
    return lo, hi, np.concatenate(outs)


def test_stateful_calibration_observes_what_a_chunk_by_chunk_loop_sees(tmp_path):
    model, utts = cell(), utterances()
    for i, u in enumerate(utts):  # one file per utterance; the state left out (zeros)
        np.savez(tmp_path / f"u{i}.npz", input=u, sr=np.array(16000, np.int64))
    names = ["kept", "pre", "stateN", "mean", "output"]
    lo, hi, _ = manual_loop(model, utts, names)
    source = model_feeds(tmp_path, model, specs_from_onnx(model), stateful={"state": "stateN"})
    stats = collect_stats(model, names, source, lambda n: MinMax())
    assert stats.samples == sum(len(u) for u in utts)
    for n in names:
        assert (stats.observers[n].lo, stats.observers[n].hi) == pytest.approx((lo[n], hi[n]), rel=1e-6), n
    # without the carry (zero state every chunk) the state term is never seen: the test can fail
    flat = {"input": np.concatenate(utts), "state": np.zeros((2, sum(map(len, utts)), H), np.float32),
            "sr": np.array(16000, np.int64)}
    zero = collect_stats(model, names, as_feeds(flat, specs_from_onnx(model)), lambda n: MinMax())
    assert (zero.observers["kept"].lo, zero.observers["kept"].hi) == (0.0, 0.0) and hi["kept"] - lo["kept"] > 0.5
    # any other reader of the source (clipping, GPTQ) gets the same carried states without handing back
    fed = [b.feeds["state"] for b in source]
    assert len(fed) == stats.samples and not fed[0].any() and fed[1].any()


def test_stateful_eval_carries_one_state_per_model(tmp_path):
    ref, cand, utts = cell(seed=0), cell(seed=3), utterances(2)
    data = [{"input": u, "sr": np.array(16000, np.int64)} for u in utts]  # a list: one sequence per element
    source = model_feeds(data, ref, specs_from_onnx(ref), stateful={"state": "stateN"})
    accs, _ = compare_models(ref.SerializeToString(), {"c": cand.SerializeToString()}, source)
    _, _, r = manual_loop(ref, utts, [])
    _, _, c = manual_loop(cand, utts, [])
    want = 10 * np.log10(np.sum(r.astype(np.float64) ** 2) / np.sum((r.astype(np.float64) - c) ** 2))
    assert accs["c"].result()["sqnr_db"] == pytest.approx(want, rel=1e-5)


def test_quantize_stateful_runs_and_reports(tmp_path):
    model, utts = cell(), utterances(4)
    data = [{"input": u, "sr": np.array(16000, np.int64)} for u in utts]
    res = lowbit.quantize(model, "int8-fast", data, stateful={"state": "stateN"},
                          verify=lowbit.VerifyOptions(threads=(1,), latency_runs=2))
    v = res.report.data["variants"][1]
    assert v["fidelity"]["samples"] == sum(len(u) for u in utts)
    assert v["fidelity"]["sqnr_db"] > 20 and v["parity"]["passed"]


@pytest.mark.parametrize("stateful, match", [
    ({"stat": "stateN"}, r"'stat' is no input.*state"),
    ({"state": "stateM"}, r"'stateM'.*no output.*stateN"),
    ({"state": "output"}, r"shape \(\?, 1\).*takes \(2, \?, 48\)"),
])
def test_bad_stateful_pairs_are_config_errors_before_any_work(stateful, match):
    with pytest.raises(ConfigError, match=match):
        lowbit.quantize(cell(), "int8-fast", utterances(1), stateful=stateful, verify=None)


def test_cli_flags_reach_quantize(tmp_path, monkeypatch, capsys):
    model_path = tmp_path / "cell.onnx"
    onnx.save(cell(), model_path)
    for i, u in enumerate(utterances(2)):
        np.savez(tmp_path / f"u{i}.npz", input=u, sr=np.array(16000, np.int64))
    seen = {}
    real = lowbit.quantize

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(lowbit, "quantize", spy)
    calib = tmp_path
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    assert main(["quantize", str(model_path), "--precision", "int8-fast", "--calib", str(calib), "--no-verify",
                 "--batch-axis", "state=1", "--batch-axis", "sr=none", "--stateful", "state->stateN",
                 "-o", str(out)]) == 0
    assert seen["batch_axes"] == {"state": 1, "sr": None} and seen["stateful"] == {"state": "stateN"}
    assert out.exists()
    assert main(["quantize", str(model_path), "--precision", "int8-fast", "--calib", str(calib), "--no-verify",
                 "--batch-axis", "stat=1", "-o", str(out)]) == 2
    assert "'stat'" in capsys.readouterr().err


# ---- the real Silero models -----------------------------------------------------------------
def _silero(name: str) -> Path:
    folder = REPO / ".cache" / "zoo" / "models" / name
    found = sorted(folder.glob("*.onnx")) if folder.exists() else []
    if not found:
        pytest.skip(f"{name} is not in .cache/zoo (python -m benchmarks.zoo.run --models {name} fetches it)")
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("name, extra, flags", [
    ("silero-vad-seq", {}, ["--stateful", "h->hn,c->cn"]),
    ("silero-vad", {"sr": np.array(16000, np.int64)}, ["--stateful", "state->stateN"]),
    ("silero-vad", {"sr": np.array(16000, np.int64)}, ["--batch-axis", "state=1", "--batch-axis", "sr=none"]),
])
def test_real_silero_through_the_cli(tmp_path, name, extra, flags):
    model = _silero(name)
    rng = np.random.default_rng(0)
    for i in range(2):  # noise bursts over silence: 40 chunks of Silero's (T, 576) framing
        x = (rng.normal(0, 0.05, (40, 576)) * (np.arange(40) % 20 < 10)[:, None]).astype(np.float32)
        data = {"input": x, **extra}
        if "--batch-axis" in flags:
            data["state"] = np.zeros((2, 40, 128), np.float32)
        np.savez(tmp_path / f"u{i}.npz", **data)
    out = tmp_path / "q" / "m.onnx"
    out.parent.mkdir()
    assert main(["quantize", str(model), "--precision", "int8-fast", "--calib", str(tmp_path), "--no-verify",
                 *flags, "-o", str(out)]) == 0
    assert out.exists()
