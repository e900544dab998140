"""The plan choosers' output error: pooled for one quantity, part by part for a detection head."""

import numpy as np
import pytest

from lowbit.core.fidelity import sqnr
from lowbit.metrics.output_error import OutputError, head_parts
from lowbit.plan.clipping import output_sqnr


def _yolo_head(rng, n=2, classes=3, anchors=400):
    """(n, 4 + classes, anchors): boxes in pixels (0-320), class probabilities."""
    boxes = rng.uniform(0, 320, (n, 4, anchors))
    scores = 1 / (1 + np.exp(-rng.normal(-4, 3, (n, classes, anchors))))
    return np.concatenate([boxes, scores], axis=1).astype(np.float32)


def test_head_parts_finds_both_yolo_layouts_and_nothing_else():
    rng = np.random.default_rng(0)
    rows = _yolo_head(rng)
    assert head_parts(rows) == ((slice(None), slice(0, 4)), (slice(None), slice(4, None)))
    columns = rows.transpose(0, 2, 1)  # YOLOv5 / YOLOX: (N, anchors, 4 + K)
    assert head_parts(columns) == ((slice(None), slice(None), slice(0, 4)), (slice(None), slice(None), slice(4, None)))
    assert head_parts(rng.normal(size=(4, 1000)).astype(np.float32)) is None  # logits
    normalised = rows.copy()
    normalised[:, :4] /= 320  # boxes as fractions of the image: one unit, nothing to separate
    assert head_parts(normalised) is None


def test_pooled_outputs_measure_as_before():
    rng = np.random.default_rng(1)
    ref = [rng.normal(size=(2, 10)).astype(np.float32) for _ in range(3)]
    cand = [r + rng.normal(0, 0.1, r.shape).astype(np.float32) for r in ref]
    assert OutputError(ref).parts is None
    assert output_sqnr(ref, cand) == pytest.approx(sqnr(np.concatenate(ref), np.concatenate(cand)), abs=1e-9)


def test_head_sqnr_is_the_mean_of_the_parts_noise_to_signal_ratios():
    rng = np.random.default_rng(2)
    ref = [_yolo_head(rng) for _ in range(3)]
    cand = [r + rng.normal(0, 0.02, r.shape).astype(np.float32) for r in ref]
    r, c = np.concatenate(ref).astype(np.float64), np.concatenate(cand).astype(np.float64)
    nsr = [np.sum((c[:, p] - r[:, p]) ** 2) / np.sum(r[:, p] ** 2) for p in (slice(0, 4), slice(4, None))]
    m = OutputError(ref)
    assert sum(m.signal(x) for x in ref) == pytest.approx(1.0)
    assert m.sqnr(ref, cand) == pytest.approx(-10 * np.log10(np.mean(nsr)), abs=1e-9)


def test_a_head_is_judged_by_its_scores_as_well_as_its_boxes():
    """Pooled, a 1-pixel box error outweighs scores lowered by a tenth; part by part, the candidate
    that keeps the scores wins (what keeps the detections)."""
    rng = np.random.default_rng(3)
    ref = [_yolo_head(rng) for _ in range(4)]
    scores_hit, boxes_hit = [], []
    for r in ref:
        a = r.copy()
        a[:, 4:] *= 0.9  # confident scores fall: detections drop under the threshold
        scores_hit.append(a)
        b = r.copy()
        b[:, :4] += rng.normal(0, 1.0, b[:, :4].shape).astype(np.float32)
        boxes_hit.append(b)
    pooled = [sqnr(np.concatenate(ref), np.concatenate(x)) for x in (scores_hit, boxes_hit)]
    assert pooled[0] > pooled[1]  # the old criterion prefers the lowered scores
    assert output_sqnr(ref, boxes_hit) > output_sqnr(ref, scores_hit) + 10


def test_every_float_output_counts_by_its_own_noise_to_signal_ratio():
    """A model's second output (a recurrent state, a landmark head) is judged like its first: the
    SQNR is that of the mean of the outputs' noise-to-signal ratios, whatever their magnitudes, so
    ruining a small second output loses to a slight error in a large first one."""
    rng = np.random.default_rng(4)
    ref = [[rng.normal(0, 100, (2, 50)).astype(np.float32), rng.normal(0, 0.01, (2, 8)).astype(np.float32),
            np.arange(2, dtype=np.int64)] for _ in range(3)]
    slight_first = [[a + rng.normal(0, 1, a.shape).astype(np.float32), b, i] for a, b, i in ref]
    ruined_second = [[a, b + rng.normal(0, 0.01, b.shape).astype(np.float32), i] for a, b, i in ref]
    m = OutputError(ref)
    assert len(m.outputs) == 2 and m.description.startswith("2 outputs")  # the int64 output is left out
    assert sum(m.signal(r) for r in ref) == pytest.approx(1.0)
    per_output = {}
    for name, cand in (("slight_first", slight_first), ("ruined_second", ruined_second)):
        nsr = [np.sum([np.sum((c[o].astype(np.float64) - r[o]) ** 2) for r, c in zip(ref, cand)])
               / np.sum([np.sum(r[o].astype(np.float64) ** 2) for r in ref]) for o in (0, 1)]
        assert m.sqnr(ref, cand) == pytest.approx(-10 * np.log10(np.mean(nsr)), abs=1e-9)
        with np.errstate(divide="ignore"):  # an untouched output: infinite SQNR
            per_output[name] = -10 * np.log10(nsr)
    assert output_sqnr(ref, slight_first) > output_sqnr(ref, ruined_second) + 10
    assert m.worst_sqnr(ref, ruined_second) == pytest.approx(min(per_output["ruined_second"]), abs=1e-9)
    first_only = OutputError([r[0] for r in ref])  # what the choices saw before: the second output's error was invisible
    assert first_only.sqnr([r[0] for r in ref], [c[0] for c in ruined_second]) == np.inf


def test_an_output_that_is_zero_in_fp32_is_left_out():
    rng = np.random.default_rng(5)
    ref = [[rng.normal(size=(2, 10)).astype(np.float32), np.zeros((2, 4), np.float32)] for _ in range(2)]
    cand = [[a + 0.1, b + 1.0] for a, b in ref]
    m = OutputError(ref)
    assert list(m.outputs) == [0]
    assert m.sqnr(ref, cand) == pytest.approx(sqnr(np.concatenate([r[0] for r in ref]),
                                                   np.concatenate([c[0] for c in cand])), abs=1e-9)


def test_the_int8_plan_choices_read_every_output(tmp_path):
    """On a model with two outputs, the clipping choice, GPTQ's keep-if-better and the fidelity
    guard measure both."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import lowbit
    from lowbit.presets import preset

    rng = np.random.default_rng(6)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (32, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.1, (96, 32, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["features"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["r1"], ["pooled"], name="pool")]
    graph = helper.make_graph(nodes, "two_outputs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 96, 16, 16]),
                               helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 32, 1, 1])],
                              initializer=[w1, w2])
    path = tmp_path / "two_outputs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    calib = rng.normal(size=(16, 3, 16, 16)).astype(np.float32)
    # no timings of this CPU: its speed fallback would ship before the guard measures
    r = lowbit.quantize(str(path), preset("int8").with_(objective="size", target="vnni"), calib, verify=None)
    assert r.plan.decisions.activation_clipping["error"].startswith("2 outputs")
    assert r.plan.decisions.algorithm_choices["gptq"]["error"].startswith("2 outputs")
    assert r.report.data["fidelity_check"]["error"].startswith("2 outputs")
