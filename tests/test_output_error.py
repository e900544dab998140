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
