"""Distillation losses, one per model output, each normalised so that outputs weigh alike.

- classifier logits ((N, C) with C >= 2, not probabilities): KL(softmax(teacher) || softmax(student)),
  the distillation loss of Hinton et al. 2015 at temperature 1;
- probability rows along the last axis ((N, C) softmax scores, a recognizer's (N, T, C) per-frame
  distributions): the same KL per row, averaged over the rows (frames) of each sample, on the
  probabilities themselves: a squared error on them is blind to the classes with small probability
  that decide a near tie;
- a raw detection head (YOLOv8's (N, 4 + C, anchors), YOLOv5 / YOLOX's (N, anchors, 5 + C)): that
  relative squared error for the box coordinates and for the scores apart, averaged, as the plan
  choices measure it (`lowbit.metrics.output_error`): pooled, the boxes' pixels drown the scores;
- any other output: squared error over the teacher's mean square (1 / SQNR), so that its scale
  does not matter.
Each output's loss is divided by its value for the PTQ plan on the held-out data, so every output
starts at 1 and the total says how much of the quantization error is left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.metrics.output_error import head_parts


def is_logits(t: torch.Tensor) -> bool:
    """(N, C) scores that are not already probabilities (rows not summing to 1 with values in [0, 1])."""
    if t.dim() != 2 or t.shape[1] < 2:
        return False
    probs = bool((t >= 0).all() and (t <= 1).all() and torch.allclose(t.sum(1), torch.ones(t.shape[0]), atol=1e-3))
    return not probs


def is_probability_rows(t: torch.Tensor) -> bool:
    """Rows along the last axis (at least 2 classes) that are distributions: in [0, 1], summing to 1."""
    if t.dim() < 2 or t.shape[-1] < 2 or not t.is_floating_point():
        return False
    return bool((t >= 0).all() and (t <= 1).all() and torch.allclose(t.sum(-1), torch.ones(()), atol=1e-3))


def output_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean per-sample loss of one output; `kind` is 'kl', 'kl-rows', 'head-rows', 'head-columns' or
    'mse' (see the module)."""
    if kind == "kl":
        return F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True,
                        reduction="batchmean")
    if kind == "kl-rows":
        t = teacher.clamp_min(1e-12)
        per_row = (t * (t.log() - student.clamp_min(1e-12).log())).sum(-1)
        return per_row.reshape(student.shape[0], -1).mean(1).mean()
    if kind in ("head-rows", "head-columns"):
        parts = (student[:, :4], student[:, 4:], teacher[:, :4], teacher[:, 4:]) if kind == "head-rows" else \
            (student[..., :4], student[..., 4:], teacher[..., :4], teacher[..., 4:])
        return (_relative_mse(parts[0], parts[2]) + _relative_mse(parts[1], parts[3])) / 2
    return _relative_mse(student, teacher)


def _relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    err = (student - teacher).pow(2).reshape(student.shape[0], -1).mean(1)
    power = teacher.pow(2).reshape(teacher.shape[0], -1).mean(1).clamp_min(1e-12)
    return (err / power).mean()


def _head_kind(t: torch.Tensor) -> str | None:
    parts = head_parts(t.detach().cpu().numpy()) if t.dim() == 3 and t.is_floating_point() else None
    return None if parts is None else "head-rows" if len(parts[0]) == 2 else "head-columns"


def kinds(teacher_outputs: list[torch.Tensor]) -> list[str]:
    return ["kl" if is_logits(t) else "kl-rows" if is_probability_rows(t) else _head_kind(t) or "mse"
            for t in teacher_outputs]
