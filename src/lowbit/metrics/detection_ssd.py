"""SSD-style detectors (two outputs: decoded boxes and per-class scores), scored like the YOLO heads:
per-class NMS, then F1 at IoU 0.5 of the candidate's detections against the reference's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lowbit.errors import ConfigError
from lowbit.metrics.base import Metric, register_metric
from lowbit.metrics.detection import cxcywh_to_xyxy, f1_terms, select

BOX_FORMATS = ("xyxy", "yxyx", "cxcywh")


def decode_ssd(boxes: np.ndarray, scores: np.ndarray, box_format: str = "xyxy", background: int = -1,
               conf: float = 0.25, iou: float = 0.45) -> np.ndarray:
    """One sample's boxes (A, 4) and class scores (A, C) -> detections (K, 6) as (x1, y1, x2, y2,
    score, class); the `background` class (-1: none) never counts as a detection."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    s = np.asarray(scores, np.float64).reshape(len(b), -1).copy()
    if box_format == "yxyx":
        b = b[:, [1, 0, 3, 2]]
    elif box_format == "cxcywh":
        b = cxcywh_to_xyxy(b)
    if 0 <= background < s.shape[1]:
        s[:, background] = -np.inf
    return select(b, s, conf, iou)


@register_metric("detection-ssd")
@dataclass(frozen=True)
class DetectionSsd(Metric):
    """F1 at IoU 0.5 of the candidate's detections vs the reference's for SSD-style models with two
    outputs, boxes (N, A, 4) already decoded and scores (N, A, C); 1.0 when neither detects
    anything. Options: `box_format` (xyxy, yxyx, cxcywh), `background` class id (-1: none), `conf`."""

    outputs_used: ClassVar[int] = 2
    box_format: str = "xyxy"
    background: int = -1
    conf: float = 0.25
    nms_iou: float = 0.45
    match_iou: float = 0.5

    def __post_init__(self) -> None:
        if self.box_format not in BOX_FORMATS:
            raise ConfigError(f"detection-ssd box_format must be one of {', '.join(BOX_FORMATS)}; "
                              f"got '{self.box_format}'.")

    def _dets(self, outputs) -> list[np.ndarray]:
        boxes, scores = outputs[0], outputs[1]
        return [decode_ssd(b, s, self.box_format, self.background, self.conf, self.nms_iou)
                for b, s in zip(boxes, scores)]

    def per_sample(self, reference, candidate, labels=None):
        return f1_terms(self._dets(reference), self._dets(candidate), self.match_iou)

    def score(self, reference, candidate, labels=None) -> float:
        num, den = self.per_sample(reference, candidate)
        return 1.0 if den.sum() == 0 else float(num.sum() / den.sum())
