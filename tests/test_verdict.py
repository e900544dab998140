"""Reports that tell the truth about the task: metrics that cannot lie (zero outputs, tiny n),
metric inference on hand-built outputs, the verdict line in text / JSON / HTML, a missed budget
that exits 3 and writes nothing, and energy priced on what executes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lowbit.errors import ConfigError
from lowbit.metrics import METRICS, parse_metric
from lowbit.metrics.infer import choose_metrics, yolox_size
from lowbit.metrics.results import evaluate, output_failures, wilson
from lowbit.report import Report
from lowbit.report.html import render_html
from lowbit.verify.latency import noise_warnings


# --- metrics that cannot lie -------------------------------------------------------------------
def test_cosine_of_two_zero_vectors_is_undefined_and_a_zero_candidate_fails():
    cos = METRICS.create("cosine")
    zero, x = np.zeros((3, 4)), np.ones((3, 4))
    assert np.isnan(cos.score(zero, zero))  # no angle: undefined, never 1.0
    assert cos.score(x, zero) == 0.0       # FP32 says something, the candidate says nothing
    r = evaluate(parse_metric("cosine"), {"y": zero}, {"y": zero})
    assert r.value is None and r.n == 0 and r.undefined == 3
    # one sample zero in both (left out), one agreeing (1), one orthogonal (0): mean over 2 = 0.5
    ref = np.array([[0, 0], [1, 0], [1, 0]], float)
    cand = np.array([[0, 0], [2, 0], [0, 3]], float)
    r = evaluate(parse_metric("cosine"), {"y": ref}, {"y": cand})
    assert r.value == pytest.approx(0.5) and r.n == 2 and r.undefined == 1
    assert output_failures({"y": x}, {"y": zero}) == ["output y is all zeros where FP32's is not"]
    assert output_failures({"y": zero}, {"y": zero}) == []
    assert "non-finite" in output_failures({"y": x}, {"y": x * np.nan})[0]


def test_fidelity_accumulator_cosine_is_not_one_for_zero_outputs():
    from lowbit.verify.fidelity import FidelityAccumulator

    acc = FidelityAccumulator(["y"])
    acc.update([np.ones((2, 3))], [np.zeros((2, 3))])
    assert acc.result()["cosine"] == 0.0
    both = FidelityAccumulator(["y"])
    both.update([np.zeros((2, 3))], [np.zeros((2, 3))])
    assert both.result()["cosine"] is None


def test_tiny_n_gets_a_wide_wilson_interval():
    # 8 of 8 agree: Wilson 95% = [n / (n + z^2), 1] = 8 / 11.8415 = 0.6756, not a point at 1.0
    lo, hi = wilson(8, 8)
    assert lo == pytest.approx(8 / (8 + 1.959963984540054 ** 2)) and hi == 1.0
    ref = np.eye(4)[[0, 1, 2, 3]]
    cand = np.eye(4)[[0, 1, 2, 0]]  # 3 of 4 agree
    r = evaluate(parse_metric("top1-agreement"), {"p": ref}, {"p": cand})
    assert r.value == 0.75 and r.n == 4
    assert (r.ci_low, r.ci_high) == pytest.approx(wilson(3, 4))
    assert r.ci_low < 0.4 and r.ci_high > 0.95  # n=4 says little, and the interval says so


def test_ratio_metrics_bootstrap_an_interval_containing_the_value():
    ref = np.array([[0.9], [0.9], [0.1], [0.1]] * 5)
    cand = np.array([[0.9], [0.1], [0.1], [0.1]] * 5)
    r = evaluate(parse_metric("decisions@0.5"), {"p": ref}, {"p": cand})
    assert r.value == 0.75 and r.n == 20 and r.ci_low <= 0.75 <= r.ci_high


def test_new_metrics_by_hand():
    ref = np.array([[5, 4, 3, 2, 1, 0, 0]], float).repeat(2, axis=0)
    cand = np.array([[0, 1, 2, 3, 4, 5, 0], [0, 1, 9, 3, 4, 5, 6]], float)
    # reference class 0 is the candidate's 6th / 7th best: outside its top 5 for both samples... and for k=7 inside
    assert METRICS.create("top5-agreement").score(ref, cand) == 0.0
    assert METRICS.create("top5-agreement", k=7).score(ref, cand) == 1.0
    assert METRICS.create("top1-accuracy").score(ref, cand, np.array([5, 6])) == 0.5  # argmax 5 and 2
    emb_ref = np.array([[1, 0], [0.9, 0.1], [0, 1]], float)
    emb_cand = np.array([[1, 0], [0, 1], [0.1, 0.9]], float)  # sample 1 now nearest to 2, 2 to 1
    # nearest neighbours: ref 0->1, 1->0, 2->1; cand 0->2 (0.11 > 0), 1->2, 2->1: only sample 2 kept
    assert METRICS.create("nn-kept").score(emb_ref, emb_cand) == pytest.approx(1 / 3)
    # pairs at cosine >= 0.5: ref says (0,1) same; cand says (1,2) same: 1 of 3 pairs agree on "different"
    assert METRICS.create("verification-agreement").score(emb_ref, emb_cand) == pytest.approx(1 / 3)


def test_ssd_detection_by_hand():
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]], float)
    scores = np.array([[[0.1, 0.9], [0.8, 0.2]]])  # box 0: class 1; box 1: class 0 = background
    m = METRICS.create("detection-ssd", background=0)
    assert m.score([boxes, scores], [boxes, scores]) == 1.0
    moved = boxes + [[[20, 20, 20, 20], [0, 0, 0, 0]]]
    # box 0 moved off its place: 0 matches of 1 + 1 detections
    assert m.score([boxes, scores], [moved, scores]) == 0.0
    with pytest.raises(ConfigError, match="box_format"):
        METRICS.create("detection-ssd", box_format="xywh")


# --- metric specs and inference ----------------------------------------------------------------
def test_metric_spec_options_and_errors():
    c = parse_metric("detection-yolo:conf=0.1,output=out0", ["nms_iou=0.6"])
    assert (c.metric.conf, c.metric.nms_iou, c.outputs) == (0.1, 0.6, ("out0",))
    with pytest.raises(ConfigError, match="has no option 'k'.*conf"):
        parse_metric("detection-yolo:k=3")
    with pytest.raises(ConfigError, match="takes a float"):
        parse_metric("detection-yolo:conf=high")
    with pytest.raises(ConfigError, match="unknown metric"):
        parse_metric("detection-yolov8")


def _names(choices):
    return [(c.name, c.outputs) for c in choices]


def test_inference_on_hand_built_outputs():
    rng = np.random.default_rng(0)
    yolo = np.concatenate([rng.uniform(0, 320, (4, 4, 2100)), rng.uniform(0, 1, (4, 18, 2100))], axis=1)
    assert _names(choose_metrics({"out": yolo}))[0] == ("detection-yolo", ("out",))
    assert yolox_size(3549) == 416 and yolox_size(3548) is None
    yolox = np.concatenate([rng.normal(size=(2, 3549, 4)), rng.uniform(0, 1, (2, 3549, 3))], axis=2)
    c = choose_metrics({"h": yolox})[0]
    assert c.name == "detection-yolox" and c.metric.size == 416
    assert choose_metrics({"p": rng.uniform(0, 1, (5, 1))})[0].name == "decisions@0.5"
    logits = rng.normal(size=(6, 10))
    assert [c.name for c in choose_metrics({"logits": logits})] == ["top1-agreement", "top5-agreement", "sqnr"]
    emb = rng.normal(size=(6, 100))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert [c.name for c in choose_metrics({"x": emb})][:2] == ["cosine", "nn-kept"]
    assert choose_metrics({"face": rng.normal(size=(6, 128))})[0].name == "cosine"  # 128 wide: an embedding
    assert choose_metrics({"mask": rng.uniform(0, 1, (2, 1, 16, 16))})[0].name == "mask-iou"
    # a (T, C) softmax per sample (CTC text recognition) is not a YOLO head, however wide C is
    steps = rng.uniform(0.1, 1, (2, 40, 6625))
    assert [c.name for c in choose_metrics({"rec": steps / steps.sum(axis=2, keepdims=True)})][:2] == \
        ["ctc-exact", "ctc-cer"]
    # independent probabilities per sample (per-frame VAD, multi-label): thresholded decisions
    assert choose_metrics({"frames": rng.uniform(0, 1, (4, 128))})[0].name == "decisions@0.5"
    # several outputs: a task if the first shows one, and SQNR per output
    multi = _names(choose_metrics({"a": rng.normal(size=(3, 7, 5, 5)), "b": rng.normal(size=(3, 2))}))
    assert multi == [("sqnr", ("a",)), ("cosine", ("a",)), ("sqnr", ("b",))]
    ssd = choose_metrics({"boxes": rng.uniform(size=(2, 50, 4)), "scores": rng.uniform(size=(2, 50, 3))})
    assert _names(ssd)[0] == ("detection-ssd", ("boxes", "scores"))
    given = choose_metrics({"logits": logits}, parse_metric("cosine"))
    assert given[0].name == "cosine" and given[0].source == "given"
    labeled = choose_metrics({"logits": logits}, labels=np.arange(6))
    assert labeled[-1].name == "top1-accuracy"


# --- the verdict ---------------------------------------------------------------------------------
def _report(budget=None, failures=()):
    lat = lambda m: {"1": {"median": m, "p10": m * 0.9, "p90": m * 1.1, "runs": 30}}  # noqa: E731
    metric = {"name": "detection-yolo", "value": 0.94, "n": 99, "ci_low": 0.91, "ci_high": 0.96,
              "higher_is_better": True, "definition": "F1", "outputs": ["output0"], "source": "given",
              "reason": "", "undefined": 0}
    data = {"title": "t", "variants": [
        {"label": "fp32", "size_bytes": 3_700_000, "latency_ms": lat(24.0), "metrics": []},
        {"label": "int8", "size_bytes": 1_000_000, "latency_ms": lat(10.0), "metrics": [metric],
         "parity": {"passed": True, "within_one_step": 1.0}, "failures": list(failures)}]}
    if budget is not None:
        data["budget"] = budget
    return Report(data)


def test_verdict_line_in_text_json_and_html():
    r = _report()
    line = ("int8: 3.7x smaller, 2.4x faster (1 thread), detection-yolo 0.940 (n=99, 95% CI 0.910-0.960), "
            "parity pass — OK")
    assert str(r).splitlines()[-1] == line
    assert json.loads(r.to_json())["verdict"] == [{"label": "int8", "status": "OK", "text": line}]
    assert line in render_html(json.loads(r.to_json())).replace("&#x27;", "'")
    header, rows = r.rows()
    assert "detection-yolo (n=99)" in header and "0.9400 [0.910-0.960]" in rows[1]
    assert "top-1 agree" not in header and "KL" not in header  # metrics that do not apply are not shown


def test_verdict_statuses():
    missed = {"label": "int8", "metric": "detection-yolo", "floor": 0.95, "holdout_metric": 0.93,
              "holdout_samples": 50, "met": False}
    v = _report(missed).verdicts()[0]
    assert v["status"] == "BELOW BUDGET" and "held-out 0.9300 (n=50)" in v["text"]
    dead = _report(failures=["output output0 is all zeros where FP32's is not"]).verdicts()[0]
    assert dead["status"] == "FAIL" and "all zeros" in dead["text"]
    low = _report()
    low.variants[1]["metrics"][0]["value"] = 0.32
    assert low.verdicts()[0]["status"] == "LOW"


def test_latency_noise_warning():
    assert noise_warnings({"fp32": {"1": {"median": 60, "p10": 43, "p90": 85}}})
    assert noise_warnings({"fp32": {"1": {"median": 60, "p10": 58, "p90": 63}}}) == []


# --- the budget through the real CLI -------------------------------------------------------------
@pytest.fixture()
def folders(tmp_path, calib_arrays, eval_arrays):
    calib, ev = tmp_path / "calib", tmp_path / "eval"
    for folder, arrays in ((calib, calib_arrays), (ev, eval_arrays)):
        folder.mkdir()
        for i, a in enumerate(arrays):
            np.save(folder / f"{i:03d}.npy", a)
    return calib, ev


def test_missed_budget_exits_3_and_writes_nothing(small_model_path, folders, tmp_path, capsys):
    from lowbit.cli.commands import EXIT_BELOW_BUDGET, main

    calib, ev = folders
    out, rep = tmp_path / "m.onnx", tmp_path / "r.json"
    argv = ["quantize", str(small_model_path), "--calib", str(calib), "--eval", str(ev), "-o", str(out),
            "--threads", "1", "--latency-runs", "2", "--report-json", str(rep),
            "--metric", "top1-agreement", "--min-metric", "1.01"]  # agreement never exceeds 1
    assert main(argv) == EXIT_BELOW_BUDGET == 3
    assert not out.exists() and not rep.exists()
    assert "BELOW BUDGET" in capsys.readouterr().out
    assert main(argv + ["--keep-failed"]) == 3
    assert out.exists() and json.loads(rep.read_text())["verdict"][0]["status"] == "BELOW BUDGET"


def test_eval_metric_flag_and_bad_options(small_model_path, folders, tmp_path, capsys):
    from lowbit.cli.commands import main

    _, ev = folders
    rep = tmp_path / "r.json"
    assert main(["eval", str(small_model_path), str(small_model_path), "--data", str(ev), "--threads", "1",
                 "--latency-runs", "2", "--metric", "top5-agreement", "--metric-option", "k=3",
                 "--report-json", str(rep)]) == 0
    r = json.loads(rep.read_text())
    assert r["metric"]["headline"] == "top5-agreement" and r["metric"]["source"] == "given"
    assert r["variants"][1]["metrics"][0]["value"] == 1.0 and r["variants"][1]["metrics"][0]["n"] == len(list(ev.iterdir()))
    assert main(["eval", str(small_model_path), str(small_model_path), "--data", str(ev), "--threads", "1",
                 "--metric", "top5-agreement:conf=3"]) == 2
    assert "has no option 'conf'" in capsys.readouterr().err


# --- energy priced on what executes --------------------------------------------------------------
def test_fp16_storage_on_avx2_is_priced_as_fp32_arithmetic(small_model_path):
    from lowbit.emit.fp16 import emit_fp16_weights, fp16_plan
    from lowbit.verify.energy import ADD_PJ, MULT_PJ, estimate, priced_precisions
    from lowbit.load.model import load_model
    from lowbit.load.prepare import prepare

    model = prepare(load_model(str(small_model_path))).proto
    e32 = estimate(model)
    q, plan = emit_fp16_weights(model)
    priced = priced_precisions(plan, q.SerializeToString(), fp16_arithmetic=False)
    e = estimate(model, priced)
    # every MAC at FP32 prices; only the weights read (2 bytes instead of 4) cost less
    assert e["compute_uj"] == pytest.approx(e32["macs"] * (MULT_PJ["fp32"] + ADD_PJ["fp32"]) / 1e6)
    assert e["compute_uj"] == pytest.approx(e32["compute_uj"]) and e["weight_bytes"] < e32["weight_bytes"]
    # an FP16-arithmetic plan on a CPU without FP16 arithmetic: the same FP32 pricing
    arith = fp16_plan(model, {})
    assert set(priced_precisions(arith, None, fp16_arithmetic=False).values()) <= {"fp16-storage", "fp32"}
    on_arm = estimate(model, priced_precisions(arith, None, fp16_arithmetic=True))
    assert on_arm["compute_uj"] < e["compute_uj"]
    assert any("FP16" in a for a in e["assumptions"])
