"""Agreement of dense probability maps (text-detection maps, segmentation masks, piano rolls):
intersection over union of the regions each model puts above a threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.metrics.base import Metric, ratio, register_metric


def mask_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> float:
    """|ref > t AND cand > t| / |ref > t OR cand > t| pooled over all elements of all samples;
    1.0 when neither map exceeds the threshold anywhere (they agree: nothing there)."""
    r, c = np.asarray(reference) > threshold, np.asarray(candidate) > threshold
    union = int(np.count_nonzero(r | c))
    return 1.0 if union == 0 else int(np.count_nonzero(r & c)) / union


@register_metric("mask-iou")
@dataclass(frozen=True)
class MaskIou(Metric):
    """IoU of the candidate's thresholded map with the reference's, pooled over all samples (every
    pixel weighs the same); 1.0 when both maps are empty. The one knob: `threshold`, the model's
    own binarization level (DBNet text maps: 0.3, PaddleOCR's det_db_thresh)."""

    threshold: float = 0.3

    def score(self, reference, candidate, labels=None) -> float:
        return mask_iou(reference, candidate, self.threshold)

    def per_sample(self, reference, candidate, labels=None):
        r = np.asarray(reference).reshape(len(reference), -1) > self.threshold
        c = np.asarray(candidate).reshape(len(candidate), -1) > self.threshold
        return ratio(np.count_nonzero(r & c, axis=1), np.count_nonzero(r | c, axis=1))
