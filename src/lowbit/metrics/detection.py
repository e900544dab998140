"""Object detection agreement with FP32: decode each model's raw head, per-class NMS, then the F1
score of the candidate's detections against the reference's, matched at IoU >= 0.5.

FP32's detections stand in for ground truth: a quantized detector is good when it finds the same
objects, of the same class, in the same places. No labels are needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.metrics.base import Metric, ratio, register_metric


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (M, 4) with every box in b (K, 4), boxes as (x1, y1, x2, y2) -> (M, K)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-300), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, order = order[0], order[1:]
        keep.append(i)
        order = order[box_iou(boxes[i], boxes[order])[0] <= iou]
    return np.array(keep, dtype=np.int64)


def select(boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float) -> np.ndarray:
    """Detections (K, 6) = (x1, y1, x2, y2, score, class) from boxes (N, 4) and class scores (N, C):
    each box takes its best class, boxes under `conf` drop, NMS runs per class."""
    cls = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), cls]
    mask = best >= conf
    boxes, best, cls = boxes[mask], best[mask], cls[mask]
    kept = [np.flatnonzero(cls == c)[nms(boxes[cls == c], best[cls == c], iou)] for c in np.unique(cls)]
    idx = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    return np.concatenate([boxes[idx], best[idx, None], cls[idx, None]], axis=1).reshape(-1, 6)


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], axis=1)


def decode_yolo(head: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> np.ndarray:
    """One YOLOv8-style head (4 + C, N): rows (cx, cy, w, h, class scores...) -> detections (K, 6)."""
    head = np.asarray(head, np.float64)
    return select(cxcywh_to_xyxy(head[:4].T), head[4:].T, conf, iou)


def decode_yolox(head: np.ndarray, size: tuple[int, int], conf: float = 0.25, iou: float = 0.45,
                 strides: tuple[int, ...] = (8, 16, 32)) -> np.ndarray:
    """One YOLOX head (N, 5 + C) on an input of `size` (H, W): grid offsets and log sizes per stride,
    objectness x class score -> detections (K, 6)."""
    head = np.asarray(head, np.float64)
    grids, steps = [], []
    for s in strides:
        xv, yv = np.meshgrid(np.arange(size[1] // s), np.arange(size[0] // s))
        grids.append(np.stack([xv, yv], axis=2).reshape(-1, 2))
        steps.append(np.full((grids[-1].shape[0], 1), s))
    grid, step = np.concatenate(grids), np.concatenate(steps)
    if len(grid) != len(head):
        raise ValueError(f"a YOLOX head on {size} with strides {strides} has {len(grid)} rows; got {len(head)}")
    xy = (head[:, :2] + grid) * step
    wh = np.exp(np.clip(head[:, 2:4], None, 50)) * step
    scores = head[:, 4:5] * head[:, 5:]
    return select(cxcywh_to_xyxy(np.concatenate([xy, wh], axis=1)), scores, conf, iou)


def match_count(reference: np.ndarray, candidate: np.ndarray, iou: float = 0.5) -> int:
    """True positives: candidate detections (highest score first) greedily matched to an unmatched
    reference detection of the same class with IoU >= `iou`."""
    if len(reference) == 0 or len(candidate) == 0:
        return 0
    overlaps = box_iou(candidate[:, :4], reference[:, :4])
    overlaps[candidate[:, 5][:, None] != reference[:, 5][None, :]] = 0.0
    used = np.zeros(len(reference), bool)
    tp = 0
    for i in np.argsort(-candidate[:, 4], kind="stable"):
        o = np.where(used, 0.0, overlaps[i])
        j = int(o.argmax())
        if o[j] >= iou:
            used[j] = True
            tp += 1
    return tp


def f1_terms(references: list[np.ndarray], candidates: list[np.ndarray], iou: float = 0.5):
    """Per sample (2 TP, reference + candidate detections): F1 = sum of the first / sum of the second."""
    return ratio([2 * match_count(r, c, iou) for r, c in zip(references, candidates)],
                 [len(r) + len(c) for r, c in zip(references, candidates)])


def f1(references: list[np.ndarray], candidates: list[np.ndarray], iou: float = 0.5) -> float:
    """Micro F1 over all samples: 2 TP / (reference detections + candidate detections).
    When neither model detects anything at all the two agree completely: 1.0."""
    tp = sum(match_count(r, c, iou) for r, c in zip(references, candidates))
    total = sum(len(r) + len(c) for r, c in zip(references, candidates))
    return 1.0 if total == 0 else 2.0 * tp / total


@register_metric("detection-yolo")
@dataclass(frozen=True)
class DetectionYolo(Metric):
    """F1 at IoU 0.5 of the candidate's detections vs the reference's (output (N, 4 + C, boxes),
    YOLOv5u/v8/v11 layout, boxes as cx, cy, w, h); 1.0 when neither detects anything.
    The one knob: `conf`, the score a box needs to count as a detection."""

    conf: float = 0.25
    nms_iou: float = 0.45
    match_iou: float = 0.5

    def score(self, reference, candidate, labels=None) -> float:
        ref = [decode_yolo(h, self.conf, self.nms_iou) for h in reference]
        cand = [decode_yolo(h, self.conf, self.nms_iou) for h in candidate]
        return f1(ref, cand, self.match_iou)

    def per_sample(self, reference, candidate, labels=None):
        ref = [decode_yolo(h, self.conf, self.nms_iou) for h in reference]
        cand = [decode_yolo(h, self.conf, self.nms_iou) for h in candidate]
        return f1_terms(ref, cand, self.match_iou)


@register_metric("detection-yolox")
@dataclass(frozen=True)
class DetectionYolox(Metric):
    """F1 at IoU 0.5 of the candidate's detections vs the reference's for a raw YOLOX head
    (output (N, boxes, 5 + C) before grid decoding, input `size` square); 1.0 when neither detects
    anything. The one knob: `conf` (objectness x class score)."""

    size: int = 416
    conf: float = 0.25
    nms_iou: float = 0.45
    match_iou: float = 0.5

    def score(self, reference, candidate, labels=None) -> float:
        s = (self.size, self.size)
        ref = [decode_yolox(h, s, self.conf, self.nms_iou) for h in reference]
        cand = [decode_yolox(h, s, self.conf, self.nms_iou) for h in candidate]
        return f1(ref, cand, self.match_iou)

    def per_sample(self, reference, candidate, labels=None):
        s = (self.size, self.size)
        ref = [decode_yolox(h, s, self.conf, self.nms_iou) for h in reference]
        cand = [decode_yolox(h, s, self.conf, self.nms_iou) for h in candidate]
        return f1_terms(ref, cand, self.match_iou)
