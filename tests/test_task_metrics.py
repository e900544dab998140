"""Task metrics against hand-computed examples, including the empty cases each one defines."""

import numpy as np
import pytest

from lowbit.metrics import METRICS
from lowbit.metrics.ctc import ctc_greedy, decode_text, edit_distance
from lowbit.metrics.detection import box_iou, decode_yolo, decode_yolox, f1, match_count


def yolo_head(boxes, n_classes=3, n_anchors=6):
    """A (4 + C, N) head holding `boxes` = [(cx, cy, w, h, class, score)], other anchors all zero."""
    head = np.zeros((4 + n_classes, n_anchors), np.float32)
    for i, (cx, cy, w, h, c, s) in enumerate(boxes):
        head[:4, i] = cx, cy, w, h
        head[4 + c, i] = s
    return head


def test_box_iou_by_hand():
    # 10x10 boxes overlapping in a 5x10 strip: 50 / (100 + 100 - 50)
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(1 / 3)
    assert box_iou([[0, 0, 1, 1]], [[2, 2, 3, 3]])[0, 0] == 0.0


def test_decode_yolo_suppresses_duplicates_per_class_only():
    head = yolo_head([(50, 50, 20, 20, 0, 0.9), (51, 50, 20, 20, 0, 0.8),  # duplicate: suppressed
                      (51, 50, 20, 20, 1, 0.7),                               # same place, other class: kept
                      (10, 10, 4, 4, 2, 0.1)])                                # under conf 0.25: dropped
    dets = decode_yolo(head)
    assert sorted(dets[:, 5].tolist()) == [0, 1]
    assert dets[dets[:, 5] == 0][0, :5].tolist() == pytest.approx([40, 40, 60, 60, 0.9])


def test_detection_f1_by_hand():
    ref = np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1]])
    # one match; one box of the wrong class; one spurious box: TP 1 -> F1 = 2 / (2 + 3)
    cand = np.array([[1, 0, 11, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 2], [50, 50, 60, 60, 0.5, 0]])
    assert match_count(ref, cand) == 1
    assert f1([ref], [cand]) == pytest.approx(0.4)
    # a reference box matches at most one candidate
    assert match_count(ref[:1], np.repeat(cand[:1], 2, axis=0)) == 1


def test_detection_metric_empty_cases():
    metric = METRICS.create("detection-yolo")
    empty = yolo_head([])[None]
    one = yolo_head([(50, 50, 20, 20, 0, 0.9)])[None]
    assert metric.score(empty, empty) == 1.0  # neither detects anything: full agreement, defined as 1
    assert metric.score(one, empty) == 0.0
    assert metric.score(one, one) == 1.0


def test_yolox_grid_decoding():
    # 32x32 input, strides (8, 16, 32): 16 + 4 + 1 = 21 rows; row 5 is cell (x=1, y=1) at stride 8
    head = np.zeros((21, 6))
    head[5] = [0.5, 0.5, 0.0, 0.0, 1.0, 0.9]  # centre (1.5 * 8, 1.5 * 8) = (12, 12), size exp(0) * 8
    dets = decode_yolox(head, (32, 32))
    assert dets[:, :4].tolist() == [[8, 8, 16, 16]]
    assert METRICS.create("detection-yolox", size=32).score(head[None], head[None]) == 1.0


def test_ctc_greedy_and_text():
    # repeats merge, a blank between two equal ids keeps both
    assert ctc_greedy(np.array([0, 1, 1, 0, 1, 2, 0])) == [1, 1, 2]
    scores = np.eye(4)[[0, 2, 2, 3]]  # (T, C) one-hot scores
    assert decode_text(scores, ["-", "a", "b", "c"]) == "bc"
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], [1, 2]) == 2


def test_ctc_metrics_by_hand():
    ref = np.array([[1, 2, 3], [1, 1, 0], [0, 0, 0]])   # "abc", "a", ""
    cand = np.array([[1, 2, 2], [1, 0, 1], [0, 0, 0]])  # "ab", "aa", ""
    assert METRICS.create("ctc-exact").score(ref, cand) == pytest.approx(1 / 3)
    # edits 1 + 1 + 0 over 4 reference characters
    assert METRICS.create("ctc-cer").score(ref, cand) == pytest.approx(0.5)
    blank = np.zeros((2, 3), int)
    assert METRICS.create("ctc-cer").score(blank, blank) == 0.0
    # nothing to read, two characters invented: divisor 1
    assert METRICS.create("ctc-cer").score(blank[:1], np.array([[1, 0, 2]])) == 2.0
    assert METRICS.get("ctc-cer").higher_is_better is False


def test_mask_iou_by_hand():
    ref = np.array([[[0.9, 0.9], [0.1, 0.1]]])
    cand = np.array([[[0.9, 0.1], [0.9, 0.1]]])
    metric = METRICS.create("mask-iou")  # threshold 0.3: intersection 1, union 3
    assert metric.score(ref, cand) == pytest.approx(1 / 3)
    assert metric.score(np.zeros((2, 4)), np.zeros((2, 4))) == 1.0
    assert metric.score(np.zeros((2, 4)), np.ones((2, 4))) == 0.0


def test_decisions_by_hand():
    metric = METRICS.create("decisions@0.5")
    ref = np.array([[0.1], [0.6], [0.5], [0.9]])
    cand = np.array([[0.4], [0.4], [0.7], [0.2]])  # same side for 0 and 2
    assert metric.score(ref, cand) == 0.5
    assert metric.score(np.zeros((0, 1)), np.zeros((0, 1))) == 1.0


def test_integer_id_sequences_are_scored_as_ctc_strings():
    """A model that takes the argmax in its graph (ddddocr) outputs (N, T) class ids: the report
    compares the strings CTC reads from them (repeats merged, blank 0), not their SQNR."""
    from lowbit.metrics.infer import infer_task
    from lowbit.metrics import METRICS

    ref = np.array([[0, 3, 3, 0, 5, 5], [1, 1, 0, 2, 0, 0]], np.int64)
    cand = np.array([[3, 0, 0, 3, 5, 0], [1, 0, 2, 2, 0, 0]], np.int64)  # "3 5" read as "3 3 5"; "1 2" the same
    names = [c.name for c in infer_task("387", ref)]
    assert names == ["ctc-exact", "ctc-cer"]
    assert METRICS.create("ctc-exact").score(ref, cand) == 0.5
