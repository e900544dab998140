"""GPTQ: second-order weight rounding with error feedback.

Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (ICLR 2023). Per layer, H = 2 X X^T / n over the calibration inputs (streaming,
mergeable running sums; Conv rows are im2col patches, one H per group). Columns of W are quantized
one by one, in blocks of `block_size`; each column's rounding error, scaled by the Cholesky factor
of H^-1, is fed back onto the columns not yet quantized (OBS update). Scales and zero points are
the plan's (per tensor, per output channel or per group), so the result lies exactly on its grid.

H is taken from the float model's inputs in one pass over the data (layers in chunks of at most
`max_hessian_mb`). The knob that matters: `percdamp`, the dampening added to H's diagonal as a
fraction of its mean (raise it if a Cholesky fails); `block_size` only trades speed.

>>> config = QuantConfig(algorithms=(GPTQ(percdamp=0.01),))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from lowbit.algorithms import _layer_data as ld
from lowbit.algorithms.base import Algorithm, AlgorithmContext, register_algorithm
from lowbit.errors import ConfigError
from lowbit.plan import QuantPlan

if TYPE_CHECKING:  # torch is imported where it is used: `import lowbit` stays light
    import torch

log = logging.getLogger(__name__)

# GPTQ's column loop is many small steps: below this many weights a second thread only adds
# synchronisation (and stalls badly on a busy machine), so such layers run on one thread.
SMALL_LAYER = 2**21


@dataclass
class Hessian:
    """Mergeable running sum of x x^T over rows: H = 2 * total / count. total: (G, K/G, K/G)."""

    total: np.ndarray
    count: int = 0

    def add(self, rows: np.ndarray) -> None:
        """rows: (n, G, K/G)."""
        import torch
        r = torch.from_numpy(np.ascontiguousarray(rows.transpose(1, 0, 2)))  # (G, n, K/G)
        # float32 products summed into the float64 total (numpy widens each value exactly, as
        # .double() would, without a float64 temporary of the total's size)
        np.add(self.total, torch.bmm(r.transpose(1, 2), r).numpy(), out=self.total)
        self.count += rows.shape[0]

    def merge(self, other: "Hessian") -> "Hessian":
        self.total += other.total
        self.count += other.count
        return self

    def value(self) -> np.ndarray:
        h = self.total * 2.0
        h /= max(self.count, 1)
        return h


@register_algorithm("gptq")
@dataclass(frozen=True)
class GPTQ(Algorithm):
    """GPTQ rounding (Frantar et al. 2022). Knob: `percdamp` (dampening); `block_size` for speed;
    `act_order` quantizes columns in order of decreasing H diagonal."""

    percdamp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    max_hessian_mb: float = 512.0
    threads: int = 2

    op_types: tuple[str, ...] = field(default=("Conv", "Gemm", "MatMul"))

    stage = "plan"

    def __post_init__(self) -> None:
        if not self.percdamp > 0 or self.block_size < 1:
            raise ConfigError(f"GPTQ needs percdamp > 0 and block_size >= 1; got {self.percdamp}, {self.block_size}")
        object.__setattr__(self, "op_types", tuple(self.op_types))

    def apply(self, model: onnx.ModelProto, plan: QuantPlan | None,
              ctx: AlgorithmContext) -> tuple[onnx.ModelProto, QuantPlan | None]:
        import torch
        if plan is None or ctx.calib is None:
            raise ConfigError("GPTQ runs on a plan with calibration data (stage 'plan').")
        layers, skipped = ld.find_layers(model, plan)
        layers = [lay for lay in layers if lay.op in self.op_types]
        for name, why in skipped.items():
            log.info("gptq: %s keeps round-to-nearest: %s", name, why)
        out = onnx.ModelProto()
        out.CopyFrom(model)
        done = 0
        saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for chunk in self._chunks(layers):
                hessians: list[Hessian | None] = list(_hessians(model, chunk, ctx))
                for j, layer in enumerate(chunk):
                    h = [hessians[j].value()]  # handed over to _gptq_round, which frees it
                    hessians[j] = None  # each running sum is freed once its layer is rounded
                    q = plan.tensors[layer.weight].qparams
                    s, z, qmin, qmax = ld.grid(q, layer.w.shape)
                    m = layer.matrix
                    torch.set_num_threads(self.threads if layer.w.size >= SMALL_LAYER else 1)
                    ints = _gptq_round(m(torch.from_numpy(layer.w)).numpy(), h,
                                       m(torch.from_numpy(s)).numpy(), m(torch.from_numpy(z)).numpy(),
                                       qmin, qmax, self.block_size, self.percdamp, self.act_order)
                    ints = layer.unmatrix(torch.from_numpy(ints)).numpy()
                    ld.set_initializer(out, layer.weight, ld.on_grid(q, ints))
                    done += 1
                    ctx.progress("gptq", done, len(layers))
        finally:
            torch.set_num_threads(saved)
        return out, plan

    def _chunks(self, layers: list[ld.Layer]) -> list[list[ld.Layer]]:
        import torch
        chunks: list[list[ld.Layer]] = [[]]
        used = 0.0
        for layer in layers:
            g, _, k = layer.matrix(torch.from_numpy(layer.w)).shape
            mb = 8 * g * k * k / 2**20
            if chunks[-1] and used + mb > self.max_hessian_mb:
                chunks.append([])
                used = 0.0
            chunks[-1].append(layer)
            used += mb
        return [c for c in chunks if c]


def _hessians(model: onnx.ModelProto, layers: list[ld.Layer], ctx: AlgorithmContext) -> list[Hessian]:
    """One H per layer from one pass of the float model over the calibration data (all rows)."""
    import torch
    hs = []
    for layer in layers:
        g, _, k = layer.matrix(torch.from_numpy(layer.w)).shape
        hs.append(Hessian(np.zeros((g, k, k), dtype=np.float64)))
    for _, values in ld.stream(model, [lay.input for lay in layers], ctx.calib):
        for layer, hess, x in zip(layers, hs, values):
            n = x.shape[1] if (layer.op == "Gemm" and layer.trans_a) else x.shape[0]
            for i in range(n):
                hess.add(layer.rows(x, i, None))
        values = x = None  # this batch's activations go before the next batch's are computed
    return hs


def gptq_round(w: np.ndarray, h: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qmin: int, qmax: int,
               block_size: int = 128, percdamp: float = 0.01, act_order: bool = False) -> np.ndarray:
    """Integers (G, O, K) for weights w (G, O, K) on the grid (scale, zero_point: shaped like w),
    rounded column by column with GPTQ's error feedback; h: (G, K, K) input second moments."""
    return _gptq_round(w, [np.array(h, dtype=np.float64)], scale, zero_point, qmin, qmax, block_size, percdamp,
                       act_order)


def _gptq_round(w: np.ndarray, h_owned: list[np.ndarray], scale: np.ndarray, zero_point: np.ndarray, qmin: int,
                qmax: int, block_size: int, percdamp: float, act_order: bool) -> np.ndarray:
    """`gptq_round`, taking over the float64 array in the one-element list `h_owned` (emptied): it is
    changed in place, not copied, and freed once H^-1's factor exists, so at most three (G, K, K)
    float64 arrays are alive at once (they grow as K^2: 170 MB each for a 512-channel 3x3 conv)."""
    import torch
    W = torch.from_numpy(np.array(w, dtype=np.float32))
    S = torch.from_numpy(np.array(scale, dtype=np.float32))
    Z = torch.from_numpy(np.array(zero_point, dtype=np.float32))
    H = torch.from_numpy(np.asarray(h_owned.pop(), dtype=np.float64))
    k = W.shape[2]
    dead = torch.diagonal(H, dim1=1, dim2=2) == 0                     # (G, K): inputs always zero
    H[dead.unsqueeze(2) & torch.eye(k, dtype=torch.bool)] = 1.0
    W = W.masked_fill(dead.unsqueeze(1), 0.0)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(H, dim1=1, dim2=2), dim=1, descending=True)  # (G, K)
        W, S, Z = (t.gather(2, perm.unsqueeze(1).expand_as(t)) for t in (W, S, Z))
        H = H.gather(1, perm.unsqueeze(2).expand_as(H)).gather(2, perm.unsqueeze(1).expand_as(H))
    hinv = _inverse_cholesky(H, percdamp).float()                     # (G, K, K), upper
    del H
    Q = torch.zeros_like(W)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = W[:, :, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        Hb = hinv[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, s, z = W1[:, :, i], S[:, :, i1 + i], Z[:, :, i1 + i]   # (G, O)
            q = torch.clamp(torch.round(col / s) + z, qmin, qmax)
            Q[:, :, i1 + i] = q
            err = (col - s * (q - z)) / Hb[:, i, i].unsqueeze(1)       # (G, O)
            W1[:, :, i:] -= err.unsqueeze(2) * Hb[:, i, i:].unsqueeze(1)
            E1[:, :, i] = err
        W[:, :, i2:] -= torch.bmm(E1, hinv[:, i1:i2, i2:])
    if perm is not None:
        Q = Q.scatter(2, perm.unsqueeze(1).expand_as(Q), Q.clone())
    return Q.to(torch.int64).numpy()


def _inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1, raising the dampening until it exists. Each
    intermediate is freed as soon as the next exists: with H, at most three (G, K, K) arrays."""
    import torch
    mean_diag = torch.diagonal(H, dim1=1, dim2=2).mean(dim=1).view(-1, 1, 1)
    damp = percdamp
    for _ in range(6):
        # H + damp * mean(diag) * I without a (G, K, K) identity: H + 0.0 off the diagonal, each
        # diagonal value + damp * mean * 1.0 -- the same floats
        A = H + 0.0
        torch.diagonal(A, dim1=1, dim2=2).add_((damp * mean_diag).view(-1, 1) * 1.0)
        L, info = torch.linalg.cholesky_ex(A)
        del A
        if not bool(info.any()):
            inv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(inv, upper=True)
            del inv
            if not bool(info.any()):
                return U
        log.warning("gptq: H + %.3g mean(diag) I is not positive definite; dampening more", damp)
        damp *= 10.0
    raise ConfigError("GPTQ: the Hessian stays singular even with heavy dampening; raise percdamp.")
