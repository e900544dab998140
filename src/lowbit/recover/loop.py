"""The recovery loop: distil the FP32 teacher into the fake-quant student on unlabelled data.

Every step draws a global batch of training samples (the same on every rank, from a seeded
generator), gives image inputs a random view, and each of the W ranks trains on its rows r, r + W,
...; DDP averages the gradients, so W processes take the step one process takes on the global
batch. Weights, biases and step sizes (LSQ) learn with Adam at a rate relative to each tensor's RMS
(so no per-model tuning), on a cosine schedule over the budget. Every `eval_every` steps the
student is scored on the held-out samples (never trained on); the best-scoring state is what ships,
and training stops after `patience` evaluations without improvement.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from lowbit.errors import ConfigError
from lowbit.progress import Progress, null_progress
from lowbit.qat import distributed
from lowbit.qat.graph import QATGraph
from lowbit.recover.augment import augment_images, is_image
from lowbit.recover.data import Samples, Split, in_rows
from lowbit.recover.losses import kinds, output_loss
from lowbit.recover.options import Recover
from lowbit.recover.teacher import Teacher

log = logging.getLogger(__name__)
EVAL_BATCH = 16


@dataclass
class History:
    """What recovery did: held-out score per evaluation and the chosen step."""

    evals: list[dict] = field(default_factory=list)
    best_step: int = 0
    steps: int = 0
    seconds: float = 0.0
    stopped: str = ""

    def summary(self) -> dict:
        first, best = self.evals[0], next(e for e in self.evals if e["step"] == self.best_step)
        return {"steps": self.steps, "seconds": round(self.seconds, 1), "best_step": self.best_step,
                "stopped": self.stopped, "held_out_before": first, "held_out_after": best}


def _sum_all(x: torch.Tensor) -> torch.Tensor:
    if distributed.world()[1] > 1:
        dist.all_reduce(x)
    return x


def _param_groups(qat: QATGraph, lr: float) -> list[dict]:
    """One Adam group per tensor, its rate `lr` x the tensor's RMS (step sizes, weights and biases alike)."""
    groups = []
    for p in list(qat.weights.values()) + [q.scale for q in qat.quantizers.values() if q.learn_scale]:
        if not p.requires_grad:
            continue
        rms = float(p.detach().pow(2).mean().sqrt()) if p.numel() else 0.0
        if rms > 0:
            groups.append({"params": [p], "lr": lr * rms, "base_lr": lr * rms})
    return groups


class _Scorer:
    """Held-out score: each output's distillation loss over its PTQ value, summed (lower is better),
    and the top-1 agreement of classifier outputs; this rank scores samples rank::world."""

    def __init__(self, qat: QATGraph, held: Samples, teacher: Teacher, max_batch: int | None = None) -> None:
        rank, world = distributed.world()
        self.qat = qat
        mine = np.arange(rank, len(held), world)
        size = min(EVAL_BATCH, max_batch or EVAL_BATCH)
        self.parts = [feeds for i in range(0, len(mine), size) for feeds in held.take(mine[i:i + size])]
        self.sizes = [held.size(feeds) for feeds in self.parts]
        self.targets = [[torch.from_numpy(t) for t in teacher(feeds)] for feeds in self.parts]
        first = self.targets[0][:len(qat.output_names)]  # the rest: watched intermediate tensors
        self.kinds = kinds(first)
        self._agreement_output = next((j for j, (k, t) in enumerate(zip(self.kinds, first))
                                       if k in ("kl", "kl-rows") and t.dim() == 2), None)
        self.trainable = [t.is_floating_point() for t in first]
        self.norms = [1.0] * len(first)

    def raw(self) -> tuple[list[float], float | None]:
        was = self.qat.training
        self.qat.eval()
        n_out, n_feat = len(self.kinds), len(self.qat.watch)
        sums = torch.zeros(n_out + n_feat + 2, dtype=torch.float64)
        with torch.no_grad():
            for feeds, targets, rows in zip(self.parts, self.targets, self.sizes):
                out = self.qat(*[torch.from_numpy(feeds[k]) for k in self.qat.input_names])
                out = out if isinstance(out, tuple) else (out,)
                for j, (s, t, kind) in enumerate(zip(out, targets, self.kinds)):
                    if self.trainable[j]:
                        sums[j] += float(output_loss(kind, s, t)) * rows
                    if j == self._agreement_output:  # the first classifier's top-1 agreement
                        sums[-2] += float((s.argmax(1) == t.argmax(1)).sum())
                for j, name in enumerate(self.qat.watch):
                    sums[n_out + j] += float(output_loss("mse", self.qat.watched[name], targets[n_out + j])) * rows
                sums[-1] += rows
        self.qat.train(was)
        sums = _sum_all(sums)
        total = float(sums[-1])
        losses = [float(sums[j]) / total for j in range(n_out + n_feat)]  # outputs, then watched tensors
        agree = float(sums[-2]) / total if self._agreement_output is not None else None
        return losses, agree

    def __call__(self) -> dict:
        losses, agree = self.raw()
        # the score is the outputs' alone: the watched tensors guide training, the outputs are what ships
        score = sum(l / n for l, n, ok in zip(losses, self.norms, self.trainable) if ok)
        out = {"score": score, "losses": losses[:len(self.kinds)]}
        if agree is not None:
            out["top1_agreement"] = agree
        return out


def run(qat: QATGraph, teacher: Teacher, data: Split, opts: Recover, progress: Progress = null_progress,
        start: float | None = None) -> History:
    """Train `qat` in place (left at its best held-out state); see the module docstring."""
    start = time.perf_counter() if start is None else start
    rank, world = distributed.world()
    seconds, max_steps = opts.seconds, opts.steps
    if opts.batch_size % world:
        raise ConfigError(f"the recovery batch size ({opts.batch_size}) must divide by the number of processes "
                          f"({world}).")
    scorer = _Scorer(qat, data.held, teacher, data.max_batch)
    losses, _ = scorer.raw()
    scorer.norms = [max(l, 1e-12) for l in losses]  # every output starts at 1
    for q in qat.quantizers.values():
        q.drop = opts.qdrop if q.activation else 0.0
    model = distributed.wrap(qat, find_unused_parameters=True)
    opt = torch.optim.Adam(_param_groups(qat, opts.lr))
    hist = History()
    first = scorer()
    hist.evals.append({"step": 0, **first})
    best_score, best_state, bad = first["score"], copy.deepcopy(qat.state_dict()), 0
    n_train = data.n_train
    images = {k for k, v in data.train.groups[0].items() if opts.augment and is_image(v.shape)}
    qat.train()
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        frac = max(step / max_steps if max_steps else 0.0, elapsed / seconds if seconds else 0.0)
        stop = torch.tensor([1.0 if frac >= 1.0 else 0.0])
        if world > 1:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        if float(stop) > 0:
            hist.stopped = "budget"
            if step % opts.eval_every:  # the steps since the last evaluation get theirs
                ev = scorer()
                hist.evals.append({"step": step, **ev})
                if ev["score"] < best_score:
                    best_score, best_state, hist.best_step = ev["score"], copy.deepcopy(qat.state_dict()), step
            break
        for g in opt.param_groups:  # cosine decay over the budget (steps or time, whichever is nearer)
            g["lr"] = g["base_lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        rng = np.random.default_rng([opts.seed, step])
        idx = rng.choice(n_train, size=opts.batch_size, replace=n_train < opts.batch_size)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        if data.train.one_shape:  # augment the global batch (same draws on every rank), then take this rank's rows
            parts = []
            for feeds in data.train.take(idx):
                parts.append({k: (augment_images(torch.from_numpy(v), gen, jitter=opts.jitter) if k in images
                                  else torch.from_numpy(v))[rank::world].contiguous() for k, v in feeds.items()})
        else:
            parts = [{k: torch.from_numpy(v) for k, v in feeds.items()} for feeds in data.train.take(idx[rank::world])]
        if data.train.stacked:
            parts = [piece for feeds in parts for piece in in_rows(feeds, data.max_batch)]
        rows = sum(data.train.size(p) for p in parts)
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        # ranks may hold different numbers of forward passes (shape groups, unstacked samples, batch-1
        # pieces): then gradients are averaged by hand, once
        manual = world > 1 and (not data.train.one_shape or data.max_batch is not None)
        for feeds in parts:  # one forward pass per shape; the loss is the mean over this rank's samples
            targets = [torch.from_numpy(t) for t in teacher({k: v.numpy() for k, v in feeds.items()})]
            out = (qat if manual else model)(*[feeds[k] for k in qat.input_names])
            out = out if isinstance(out, tuple) else (out,)
            part = sum(output_loss(kind, s, t) / norm for s, t, kind, norm, ok
                       in zip(out, targets, scorer.kinds, scorer.norms, scorer.trainable) if ok)
            if qat.watch:  # feature distillation: each watched tensor's relative error, 1 at PTQ
                n_out = len(scorer.kinds)
                feats = sum(output_loss("mse", qat.watched[name], t) / norm for name, t, norm
                            in zip(qat.watch, targets[n_out:], scorer.norms[n_out:])) / len(qat.watch)
                part = part + opts.feature_weight * feats
            w = data.train.size(feeds) / rows
            (part * w).backward()
            loss = loss + part.detach() * w
        if manual:
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= world
        opt.step()
        step += 1
        if step % opts.eval_every == 0:
            ev = scorer()
            hist.evals.append({"step": step, "train_loss": float(loss.detach()), **ev})
            log.info("recover step %d (%.0f s): loss %.4f, held-out score %.4f%s", step,
                     time.perf_counter() - start, float(loss.detach()), ev["score"],
                     f", top-1 agreement {ev['top1_agreement']:.3f}" if "top1_agreement" in ev else "")
            if ev["score"] < best_score:
                best_score, best_state, bad, hist.best_step = ev["score"], copy.deepcopy(qat.state_dict()), 0, step
            else:
                bad += 1
                if bad >= opts.patience:
                    hist.stopped = "held-out score stopped improving"
                    break
        if max_steps:
            progress("recover", step, max_steps)
        else:
            progress("recover", min(int(seconds), int(time.perf_counter() - start)), int(seconds))
    qat.load_state_dict(best_state)
    qat.eval()
    for q in qat.quantizers.values():
        q.drop = 0.0
    hist.steps, hist.seconds = step, time.perf_counter() - start
    return hist
