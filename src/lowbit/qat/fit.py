"""`fit`: a small training loop for the common case (classification, one optimizer, cosine schedule).

A QATGraph is an ordinary nn.Module, so any training loop works; this one saves writing it:
optimizer, epochs, learning-rate schedule, progress through lowbit's callback, evaluation after
each epoch. It also runs a DistributedDataParallel-wrapped module (see `lowbit.qat.distributed`).
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.errors import ConfigError, ModelError
from lowbit.io import atomic_write_bytes, check_output_path, read_regular_file
from lowbit.progress import Progress, null_progress


@dataclass
class FitResult:
    """Per-epoch history: {'epoch', 'loss', 'accuracy' (or None), 'seconds'}."""

    history: list[dict] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        return self.history[-1]["accuracy"] if self.history else None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _batches(data: Iterable) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    for batch in data:
        x, y = batch[0], batch[1]
        yield torch.as_tensor(x), torch.as_tensor(y)


def evaluate(model: nn.Module, data: Iterable, progress: Progress = null_progress) -> float:
    """Top-1 accuracy (%) of `model` on (inputs, labels) batches, in eval mode and without gradients."""
    m = _unwrap(model)
    was = m.training
    m.eval()
    correct = total = 0
    with torch.no_grad():
        for i, (x, y) in enumerate(_batches(data)):
            correct += int((m(x).argmax(1) == y).sum())
            total += int(y.numel())
            progress("qat: evaluate", i + 1, None)
    m.train(was)
    return 100.0 * correct / max(1, total)


def fit(model: nn.Module, train_data: Iterable, *, epochs: int = 1, lr: float = 1e-4,
        optimizer: torch.optim.Optimizer | None = None, schedule: str = "cosine",
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
        eval_data: Iterable | None = None, progress: Progress = null_progress,
        on_epoch: Callable[[dict], Any] | None = None, checkpoint: str | None = None) -> FitResult:
    """Train `model` (a QATGraph, or any classifier; DDP-wrapped too) on (inputs, labels) batches.

    `optimizer` defaults to Adam over all parameters at `lr`; `schedule` 'cosine' (decays to 0
    over all steps) or 'constant'. After each epoch, top-1 accuracy on `eval_data` (if given) goes
    into the history and `on_epoch(entry)` is called. With `checkpoint` (a file path) the model,
    optimizer, step and history are saved atomically after every epoch, and a run started again
    with the same path resumes after the last completed epoch.

    >>> result = fit(qat, train_loader, epochs=2, lr=1e-4, eval_data=test_loader)   # doctest: +SKIP
    >>> result.accuracy                                                            # doctest: +SKIP
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a whole number, at least 1; got {epochs!r}")
    if schedule not in ("cosine", "constant"):
        raise ConfigError(f"schedule must be 'cosine' or 'constant'; got '{schedule}'")
    opt = optimizer or torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    try:
        steps_per_epoch: int | None = len(train_data)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    total = steps_per_epoch * epochs if steps_per_epoch else None
    base = [g["lr"] for g in opt.param_groups]
    result = FitResult()
    step = 0
    first = 0
    if checkpoint is not None:
        check_output_path(checkpoint, "checkpoint")  # before training, not after the first epoch
    if checkpoint is not None and os.path.isfile(checkpoint):
        step, first, result.history = _resume(checkpoint, model, opt)
    for epoch in range(first, epochs):
        sampler = getattr(train_data, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle each epoch, the same on all ranks
        model.train()
        t0, loss_sum, n = time.perf_counter(), 0.0, 0
        for i, (x, y) in enumerate(_batches(train_data)):
            if schedule == "cosine" and total:
                for g, b in zip(opt.param_groups, base):
                    g["lr"] = b * 0.5 * (1.0 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            n += len(y)
            progress(f"qat: epoch {epoch + 1}/{epochs}", i + 1, steps_per_epoch)
        entry = {"epoch": epoch + 1, "loss": loss_sum / max(1, n), "accuracy": None,
                 "seconds": time.perf_counter() - t0}
        if eval_data is not None:
            entry["accuracy"] = evaluate(model, eval_data, progress)
        result.history.append(entry)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, opt, step, epoch + 1, result.history)
        if on_epoch is not None:
            on_epoch(entry)
    return result


_HISTORY_KEYS = ["epoch", "loss", "accuracy", "seconds"]


def _resume(path: str, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, int, list[dict]]:
    """(step, epochs done, history) from a checkpoint `fit` saved, into `model` and `opt`."""
    raw = read_regular_file(path, "checkpoint", ModelError)
    try:
        state = torch.load(io.BytesIO(raw), weights_only=True)  # never arbitrary unpickling
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, epoch = int(state["step"]), int(state["epoch"])
        history = [{k: (None if v != v else v) for k, v in zip(state["history_keys"], row)}
                   for row in state["history"].tolist()]
    except Exception as e:  # torch raises many types: not a checkpoint, another model's, a missing key
        first = " ".join(str(e).split())[:400] or type(e).__name__
        raise ModelError(f"checkpoint {path} cannot resume this training ({type(e).__name__}: {first}). Give a "
                         "checkpoint that fit() saved for this model, or a new path to start afresh.") from None
    return step, epoch, history


def _save_checkpoint(path: str, model: nn.Module, opt: torch.optim.Optimizer, step: int, epoch: int,
                     history: list[dict]) -> None:
    """Everything needed to resume, as tensors and plain types only (loadable with weights_only)."""
    rows = torch.tensor([[float("nan") if h.get(k) is None else float(h[k]) for k in _HISTORY_KEYS] for h in history],
                        dtype=torch.float64)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                "history": rows, "history_keys": _HISTORY_KEYS}, buf)
    atomic_write_bytes(path, buf.getvalue())
