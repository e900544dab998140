"""Face verification: are two faces the same person? Accuracy at a distance threshold, the best
threshold, TAR at a fixed FAR, and the equal error rate, from embeddings and identity labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.metrics.base import Metric, register_metric


def pair_distances(emb: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances of all pairs i < j and whether each pair is the same identity."""
    emb = np.asarray(emb, np.float64)
    ids = np.asarray(ids)
    i, j = np.triu_indices(len(emb), k=1)
    return np.linalg.norm(emb[i] - emb[j], axis=1), ids[i] == ids[j]


def verification_stats(emb: np.ndarray, ids, threshold: float = 0.6, far: float = 0.01) -> dict:
    """Accuracy at `threshold` (same person iff distance < threshold), the threshold that
    maximises accuracy, TAR at FAR <= `far`, and the EER."""
    d, same = pair_distances(emb, ids)
    if not same.any() or same.all():
        raise ValueError("face verification needs both same-person and different-person pairs")
    acc = float(np.mean((d < threshold) == same))
    cands = np.unique(np.concatenate([d, [0.0, d.max() + 1e-6]]))
    accs = np.array([np.mean((d < t) == same) for t in cands])
    best = int(np.argmax(accs))
    last = best
    while last + 1 < len(cands) and accs[last + 1] == accs[best]:
        last += 1
    # the middle of the best interval (prev distance, last best], not its edge: the widest margin
    best_threshold = float((cands[max(best - 1, 0)] + cands[last]) / 2)
    tar_at_far = 0.0
    genuine, impostor = d[same], d[~same]
    for t in cands:
        if np.mean(impostor < t) <= far:
            tar_at_far = max(tar_at_far, float(np.mean(genuine < t)))
    frr = np.array([np.mean(genuine >= t) for t in cands])
    far_ = np.array([np.mean(impostor < t) for t in cands])
    k = int(np.argmin(np.abs(frr - far_)))
    return {"accuracy": acc, "threshold": threshold, "best_threshold": best_threshold,
            "best_accuracy": float(accs[best]), "tar_at_far": tar_at_far, "far": far,
            "eer": float((frr[k] + far_[k]) / 2), "pairs": int(len(d)),
            "max_same_distance": float(genuine.max()), "min_different_distance": float(impostor.min())}


@register_metric("face-verification")
@dataclass(frozen=True)
class FaceVerification(Metric):
    """Verification accuracy of the candidate's embeddings at `threshold` (dlib's 0.6), using
    the identity labels. The one knob: the threshold."""

    threshold: float = 0.6

    def score(self, reference, candidate, labels=None) -> float:
        if labels is None:
            raise ValueError("face-verification needs identity labels")
        return verification_stats(candidate, labels, self.threshold)["accuracy"]
