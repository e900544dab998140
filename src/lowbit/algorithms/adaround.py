"""AdaRound: learned up-or-down rounding of weights.

Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization" (ICML).
Each weight w = s * (floor(w / s) + h(V) - zp) with a rectified sigmoid h(V) in [0, 1]; V is
learned layer by layer to minimise the reconstruction error ||W x - W~ x~||^2 plus lambda times a
regulariser sum(1 - |2 h(V) - 1|^beta) that pushes every h to 0 or 1 (beta annealed 20 -> 2 after a
20 % warm-up without it). Scales stay those of the plan; only the choice between the two nearest
grid points changes, so the weights written back lie exactly on the plan's grid.

Reconstruction is the paper's asymmetric one: x is the float model's input to the layer and x~ its
input in the quantized model (the plan's simulation, with every earlier layer already rounded), so
each layer also corrects the error its predecessors left. `asymmetric=False` uses the float input
for both (one pass over the data instead of one per layer).

The knob that matters: `iterations` per layer (paper: 20k; 1000 gets most of the gain).

>>> config = QuantConfig(algorithms=(AdaRound(iterations=1000),))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from lowbit.algorithms import _layer_data as ld
from lowbit.emit.qdq import emit_simulation
from lowbit.errors import ConfigError
from lowbit.extras import require
from lowbit.plan.algorithm import Algorithm, AlgorithmContext, register_algorithm
from lowbit.plan.quant_plan import QuantPlan

if TYPE_CHECKING:  # torch is imported where it is used: `import lowbit` stays light
    import torch

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (paper, section 3.3)
# Below this many multiply-adds per step a second thread only adds synchronisation (and stalls
# badly on a busy machine): such layers run on one thread.
SMALL_STEP = 2**23
FLOAT_ONCE_MB = 1024  # float inputs of all layers gathered in one pass when their sampled rows fit


@register_algorithm("adaround")
@dataclass(frozen=True)
class AdaRound(Algorithm):
    """Learned rounding (Nagel et al. 2020). Knob: `iterations` per layer.

    `batch_rows` rows (im2col patches of sampled output positions for Conv) per step, drawn from
    `rows` kept per layer (at most `max_layer_mb` of them per copy); `time_budget_s` bounds the
    whole run: layers past it keep round-to-nearest (runs that hit it are not reproducible).
    """

    iterations: int = 1000
    batch_rows: int = 256
    rows: int = 4096
    reg_weight: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    lr: float = 1e-2
    asymmetric: bool = True
    time_budget_s: float | None = None
    max_layer_mb: float = 96.0
    threads: int = 2

    stage = "plan"

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_rows < 1 or self.rows < 1:
            raise ConfigError(f"AdaRound needs iterations, batch_rows and rows >= 1; got {self.iterations}, "
                              f"{self.batch_rows}, {self.rows}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"AdaRound warmup is a fraction of the iterations in [0, 1); got {self.warmup}")
        object.__setattr__(self, "beta", tuple(float(b) for b in self.beta))

    def apply(self, model: onnx.ModelProto, plan: QuantPlan | None,
              ctx: AlgorithmContext) -> tuple[onnx.ModelProto, QuantPlan | None]:
        torch = require("torch", "AdaRound (learned rounding by gradient descent)")
        if plan is None or ctx.calib is None:
            raise ConfigError("AdaRound runs on a plan with calibration data (stage 'plan').")
        layers, skipped = ld.find_layers(model, plan)
        for name, why in skipped.items():
            log.info("adaround: %s keeps round-to-nearest: %s", name, why)
        out = onnx.ModelProto()
        out.CopyFrom(model)
        if not layers:
            return out, plan
        n = max(1, ld.count_samples(ctx.calib))
        per = {k: self._per_sample(layer, n) for k, layer in enumerate(layers)}
        sim = emit_simulation(out, plan) if self.asymmetric else None
        # The float inputs never change: one pass gathers them all where they fit in FLOAT_ONCE_MB.
        once = sum(per[k] * n * _row_bytes(lay) for k, lay in enumerate(layers)) <= FLOAT_ONCE_MB * 2**20
        floats = ld.gather_rows(model, [(k, lay, lay.input) for k, lay in enumerate(layers)], ctx.calib, per,
                                ctx.seed) if (once or not self.asymmetric) else None
        t0 = time.perf_counter()
        with _torch_settings(self.threads):
            for k, layer in enumerate(layers):
                if self.time_budget_s is not None and time.perf_counter() - t0 > self.time_budget_s:
                    log.warning("adaround: time budget spent; %d of %d layers keep round-to-nearest",
                                len(layers) - k, len(layers))
                    break
                if floats is not None:
                    x = floats.pop(k)
                else:
                    x = ld.gather_rows(model, [(k, layer, layer.input)], ctx.calib, per, ctx.seed)[k]
                xq = x if sim is None else \
                    ld.gather_rows(sim, [(k, layer, _sim_input(sim, layer))], ctx.calib, per, ctx.seed)[k]
                q = plan.tensors[layer.weight].qparams
                s, z, qmin, qmax = ld.grid(q, layer.w.shape)
                torch.set_num_threads(self.threads if layer.w.size * self.batch_rows >= SMALL_STEP else 1)
                ints = learn_rounding(layer.w, s, z, qmin, qmax, layer.matrix, x, xq, self, seed=(ctx.seed, k))
                w = ld.on_grid(q, ints)
                ld.set_initializer(out, layer.weight, w)
                if sim is not None:
                    ld.set_initializer(sim, layer.weight, q.fake_quantize(w))
                ctx.progress("adaround", k + 1, len(layers))
        return out, plan

    def _per_sample(self, layer: ld.Layer, samples: int) -> int:
        rows = max(1, min(self.rows, int(self.max_layer_mb * 2**20 // _row_bytes(layer))))
        return max(1, math.ceil(rows / samples))


def _row_bytes(layer: ld.Layer) -> int:
    import torch
    g, _, k = layer.matrix(torch.from_numpy(layer.w)).shape
    return 4 * g * k


def _sim_input(sim: onnx.ModelProto, layer: ld.Layer) -> str:
    """The tensor the layer reads in the simulation (the dequantized activation where it is quantized)."""
    for node in sim.graph.node:
        if node.name == layer.node:
            return node.input[0]
    raise KeyError(f"node {layer.node} is not in the simulation")


class _torch_settings:
    """Deterministic, `threads`-wide torch for the duration; restores the caller's settings."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        import torch
        self.saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)

    def __exit__(self, *exc: object) -> None:
        import torch
        torch.set_num_threads(self.saved[0])
        torch.use_deterministic_algorithms(self.saved[1])


def learn_rounding(w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qmin: int, qmax: int,
                   matrix: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, xq: np.ndarray,
                   opts: AdaRound = AdaRound(), seed: tuple[int, ...] = (0,)) -> np.ndarray:
    """Integers (stored layout, int64) of w on the grid (scale, zero_point, [qmin, qmax]; both shaped
    like w) that minimise ||matrix(w) x - matrix(w~) x~||^2 over rows x, xq: (R, G, K/G).

    matrix: stored layout -> (G, O/G, K/G). Pure: deterministic for `seed`.
    """
    import torch
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
    wt = torch.from_numpy(np.asarray(w, np.float32))
    s = torch.from_numpy(np.asarray(scale, np.float32))
    z = torch.from_numpy(np.asarray(zero_point, np.float32))
    base = torch.floor(wt / s) + z                                  # grid point below w
    rest = (wt / s - torch.floor(wt / s)).clamp(0.0, 1.0 - 1e-6)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)).requires_grad_(True)  # h(v) = rest
    xf = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    xqt = torch.from_numpy(np.ascontiguousarray(xq, dtype=np.float32))
    with torch.no_grad():
        target = torch.einsum("rgk,gok->rgo", xf, matrix(wt))     # (R, G, O/G): float output
    rows = xqt.shape[0]
    m1, m2 = torch.zeros_like(v), torch.zeros_like(v)  # Adam's moments (plain Adam, written out)
    warm = int(opts.warmup * opts.iterations)
    for it in range(opts.iterations):
        idx = torch.randint(rows, (min(opts.batch_rows, rows),), generator=gen)
        h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
        wq = s * ((base + h).clamp(qmin, qmax) - z)
        out = torch.einsum("bgk,gok->bgo", xqt[idx], matrix(wq))
        loss = (out - target[idx]).pow(2).sum(dim=(1, 2)).mean()
        if it >= warm:
            rel = (it - warm) / max(1, opts.iterations - warm)
            beta = opts.beta[1] + (opts.beta[0] - opts.beta[1]) * (1.0 - rel)
            loss = loss + opts.reg_weight * (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()
        (grad,) = torch.autograd.grad(loss, v)
        with torch.no_grad():
            m1.mul_(0.9).add_(grad, alpha=0.1)
            m2.mul_(0.999).addcmul_(grad, grad, value=0.001)
            step = opts.lr * (m1 / (1 - 0.9 ** (it + 1))) / ((m2 / (1 - 0.999 ** (it + 1))).sqrt() + 1e-8)
            v.sub_(step)
    with torch.no_grad():
        q = (base + (v >= 0).float()).clamp(qmin, qmax)             # h(v) >= 0.5  <=>  v >= 0
    return q.to(torch.int64).numpy()
