"""GPTQ: second-order weight rounding with error feedback.

Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (ICLR 2023). Per layer, H = 2 X X^T / n over the calibration inputs (streaming,
mergeable running sums; Conv rows are im2col patches, one H per group). Columns of W are quantized
one by one, in blocks of `block_size`; each column's rounding error, scaled by the Cholesky factor
of H^-1, is fed back onto the columns not yet quantized (OBS update). Scales and zero points are
the plan's (per tensor, per output channel or per group), so the result lies exactly on its grid.

H is taken from the float model's inputs, one pass over the data per chunk of layers whose float64
running sums fit in `max_hessian_mb`. The BLAS library runs on one thread meanwhile (threadpoolctl,
where installed): OpenBLAS's workers spin-wait, and on a 2-core machine that also runs ONNX Runtime
or other jobs they made GPTQ 3x slower in wall time and in CPU time (PP-OCRv4 det: 44.9 s -> 13.5 s,
16.4 -> 5.5 CPU s, the same weights). Plain numpy, no torch: importing torch alone costs ~150 MB of
resident memory, more than a quantization of a small CNN otherwise needs. The knob that matters: `percdamp`, the dampening added to H's diagonal as a
fraction of its mean (raise it if a Cholesky fails); `block_size` only trades speed.

>>> config = QuantConfig(algorithms=(GPTQ(percdamp=0.01),))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from lowbit.algorithms import _layer_data as ld
from lowbit.plan.algorithm import Algorithm, AlgorithmContext, register_algorithm
from lowbit.errors import ConfigError
from lowbit.target.memory import release_free_memory
from lowbit.plan.quant_plan import QuantPlan

log = logging.getLogger(__name__)



def one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS (numpy's OpenBLAS / MKL) on one thread inside the block, where threadpoolctl is
    installed; otherwise the library's own setting."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


ADD_MB = 16.0  # float32 products per step of Hessian.add (K <= 2048: all columns at once)


@dataclass
class Hessian:
    """Mergeable running sum of x x^T over rows: H = 2 * total / count. total: (G, K/G, K/G)."""

    total: np.ndarray
    count: int = 0

    def add(self, rows: np.ndarray) -> None:
        """rows: (n, G, K/G)."""
        r = np.ascontiguousarray(rows.transpose(1, 0, 2), dtype=np.float32)  # (G, n, K/G)
        # float32 products summed into the float64 total (numpy widens each value exactly), a block
        # of at most ADD_MB of columns at a time: no temporary of the total's size
        g, k = self.total.shape[0], self.total.shape[2]
        step = max(1, int(ADD_MB * 2**20) // (4 * g * k))
        rt = r.transpose(0, 2, 1)
        for j in range(0, k, step):
            np.add(self.total[:, :, j:j + step], np.matmul(rt, r[:, :, j:j + step]), out=self.total[:, :, j:j + step])
        self.count += rows.shape[0]

    def merge(self, other: "Hessian") -> "Hessian":
        self.total += other.total
        self.count += other.count
        return self

    def value(self) -> np.ndarray:
        h = self.total * 2.0
        h /= max(self.count, 1)
        return h

    def take(self) -> np.ndarray:
        """`value()` computed in the running sum's own memory (the same floats): the sum is used up."""
        h, self.total = self.total, np.empty((0, 0, 0))
        h *= 2.0
        h /= max(self.count, 1)
        return h


def _matrix(layer: ld.Layer, w: np.ndarray) -> np.ndarray:
    """numpy form of `Layer.matrix`: stored layout -> (G, O/G, K/G)."""
    if layer.op == "Conv":
        return w.reshape(layer.groups, w.shape[0] // layer.groups, -1)
    if layer.op == "Gemm" and layer.trans_b:
        return w[None]
    return w.T[None]


def _unmatrix(layer: ld.Layer, m: np.ndarray) -> np.ndarray:
    """numpy form of `Layer.unmatrix`: (G, O/G, K/G) -> stored layout."""
    if layer.op == "Conv":
        return m.reshape(layer.w.shape)
    return m[0] if (layer.op == "Gemm" and layer.trans_b) else m[0].T


@register_algorithm("gptq")
@dataclass(frozen=True)
class GPTQ(Algorithm):
    """GPTQ rounding (Frantar et al. 2022). Knob: `percdamp` (dampening); `block_size` for speed;
    `act_order` quantizes columns in order of decreasing H diagonal. `max_hessian_mb` bounds the
    float64 running sums alive at once (more passes over the data when lower); `threads` is kept
    for saved configs (the BLAS library's own thread count applies)."""

    percdamp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    max_hessian_mb: float = 64.0
    threads: int = 2
    # rows (conv output positions, tokens) per sample in H, drawn at random (seeded); 0 = all.
    # Neighbouring conv positions carry nearly the same patch: on YOLOv8n (320x320) all rows cost
    # 48 s of H sums, most of GPTQ's time, for a Hessian that a few hundred rows per image pin down.
    rows_per_sample: int = 0
    # convolutions with more inputs per output (K/G = C/G x kh x kw) keep round-to-nearest: H is
    # K x K float64 and its factorisation costs K^3. PP-OCRv3 rec's 1024-channel 3x3 conv (K = 9216,
    # 64 outputs): 680 MB of H and most of the 142 s its `int8` took. MatMul / Gemm are not capped
    # (their K is a model width, where GPTQ is what 4-bit weights need)
    max_columns: int = 8192

    op_types: tuple[str, ...] = field(default=("Conv", "Gemm", "MatMul"))

    stage = "plan"

    def __post_init__(self) -> None:
        if not self.percdamp > 0 or self.block_size < 1 or self.rows_per_sample < 0 or self.max_columns < 1:
            raise ConfigError(f"GPTQ needs percdamp > 0, block_size >= 1, rows_per_sample >= 0 and max_columns "
                              f">= 1; got {self.percdamp}, {self.block_size}, {self.rows_per_sample}, {self.max_columns}")
        object.__setattr__(self, "op_types", tuple(self.op_types))

    def apply(self, model: onnx.ModelProto, plan: QuantPlan | None,
              ctx: AlgorithmContext) -> tuple[onnx.ModelProto, QuantPlan | None]:
        if plan is None or ctx.calib is None:
            raise ConfigError("GPTQ runs on a plan with calibration data (stage 'plan').")
        layers, skipped = ld.find_layers(model, plan)
        layers = [lay for lay in layers if lay.op in self.op_types]
        for name, why in skipped.items():
            log.info("gptq: %s keeps round-to-nearest: %s", name, why)
        with one_blas_thread():
            rounded = self.round_layers(model, layers, ctx, lambda layer: ld.grid(plan.tensors[layer.weight].qparams,
                                                                                  layer.w.shape, copy=False))
        # the model copy is made once the Hessians are gone
        out = onnx.ModelProto()
        out.CopyFrom(model)
        for name, ints in rounded.items():
            ld.set_initializer(out, name, ld.on_grid(plan.tensors[name].qparams, ints.astype(np.int64)))
        return out, plan

    def round_layers(self, model: onnx.ModelProto, layers: list[ld.Layer], ctx: AlgorithmContext,
                     grid_of: Callable[[ld.Layer], tuple[np.ndarray, np.ndarray, int, int]],
                     fixed_of: Callable[[ld.Layer], np.ndarray | None] = lambda layer: None) -> dict[str, np.ndarray]:
        """{weight name: integers} of every layer on its grid (`grid_of(layer)`: scale and zero point
        shaped like the weight, qmin, qmax; `fixed_of(layer)`: integers some weights must take, NaN
        elsewhere, or None), chunk by chunk of Hessians."""
        rounded: dict[str, np.ndarray] = {}  # weight -> integers, compact until the copy is made
        wide = {lay.node for lay in layers if lay.op == "Conv" and _matrix(lay, lay.w).shape[2] > self.max_columns}
        for name in wide:
            log.info("gptq: %s keeps round-to-nearest: more than %d inputs per output (max_columns)",
                     name, self.max_columns)
        layers = [lay for lay in layers if lay.node not in wide]
        done = 0
        for chunk in self._chunks(layers):
            hessians: list[Hessian | None] = list(_hessians(model, chunk, ctx, self.rows_per_sample))
            for j, layer in enumerate(chunk):
                h = [hessians[j].take()]  # handed over to _gptq_round, which frees it
                hessians[j] = None  # each running sum is freed once its layer is rounded
                s, z, qmin, qmax = grid_of(layer)  # read-only views: _gptq_round makes its own
                fixed = fixed_of(layer)
                ints = _gptq_round(_matrix(layer, layer.w), h, _matrix(layer, s), _matrix(layer, z),
                                   qmin, qmax, self.block_size, self.percdamp, self.act_order,
                                   None if fixed is None else _matrix(layer, fixed))
                small = np.int8 if qmin >= -128 and qmax <= 127 else np.int32
                rounded[layer.weight] = np.ascontiguousarray(_unmatrix(layer, ints)).astype(small)
                layer.w = np.empty(0, np.float32)  # the layer's float weight is no longer needed
                release_free_memory()  # the rounding's temporaries, before the next layer's Hessian grows
                done += 1
                ctx.progress("gptq", done, len(layers))
        return rounded

    def _chunks(self, layers: list[ld.Layer]) -> list[list[ld.Layer]]:
        chunks: list[list[ld.Layer]] = [[]]
        used = 0.0
        for layer in layers:
            g, _, k = _matrix(layer, layer.w).shape
            mb = 8 * g * k * k / 2**20
            if chunks[-1] and used + mb > self.max_hessian_mb:
                chunks.append([])
                used = 0.0
            chunks[-1].append(layer)
            used += mb
        return [c for c in chunks if c]


def _hessians(model: onnx.ModelProto, layers: list[ld.Layer], ctx: AlgorithmContext,
              rows_per_sample: int = 0) -> list[Hessian]:
    """One H per layer from one pass of the float model over the calibration data (all rows, or
    `rows_per_sample` of each sample's rows drawn without replacement, seeded by ctx.seed)."""
    rng = np.random.default_rng(ctx.seed)
    hs = []
    for layer in layers:
        g, _, k = _matrix(layer, layer.w).shape
        hs.append(Hessian(np.zeros((g, k, k), dtype=np.float64)))
    for _, values in ld.stream(model, [lay.input for lay in layers], ctx.calib):
        for layer, hess, x in zip(layers, hs, values):
            n = x.shape[1] if (layer.op == "Gemm" and layer.trans_a) else x.shape[0]
            total = layer.positions(x)
            for i in range(n):
                pick = None
                if 0 < rows_per_sample < total and layer.op != "Gemm":
                    pick = np.sort(rng.choice(total, rows_per_sample, replace=False))
                hess.add(layer.rows(x, i, pick))
        values = x = None  # this batch's activations go before the next batch's are computed
    return hs


def gptq_round(w: np.ndarray, h: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qmin: int, qmax: int,
               block_size: int = 128, percdamp: float = 0.01, act_order: bool = False) -> np.ndarray:
    """Integers (G, O, K) for weights w (G, O, K) on the grid (scale, zero_point: shaped like w),
    rounded column by column with GPTQ's error feedback; h: (G, K, K) input second moments."""
    return _gptq_round(w, [np.array(h, dtype=np.float64)], scale, zero_point, qmin, qmax, block_size, percdamp,
                       act_order)


def _gptq_round(w: np.ndarray, h_owned: list[np.ndarray], scale: np.ndarray, zero_point: np.ndarray, qmin: int,
                qmax: int, block_size: int, percdamp: float, act_order: bool,
                fixed: np.ndarray | None = None) -> np.ndarray:
    """`gptq_round`, taking over the float64 array in the one-element list `h_owned` (emptied): it is
    permuted, factorised and inverted in place, so one (G, K, K) float64 array is alive (it grows as
    K^2: 162 MB for a 512-channel 3x3 conv), plus temporaries of K x BLOCK. `fixed` (shaped like w,
    NaN where free): integers some weights must take; their error is fed back like any other."""
    W = np.array(w, dtype=np.float32)
    S = np.array(scale, dtype=np.float32)
    Z = np.array(zero_point, dtype=np.float32)
    F = np.full(W.shape, np.nan, np.float32) if fixed is None else np.array(fixed, dtype=np.float32)
    H = np.asarray(h_owned.pop(), dtype=np.float64)
    g, k = H.shape[0], H.shape[2]
    diag = np.einsum("gii->gi", H)                                    # a writable view of H's diagonal
    dead = diag == 0                                                  # (G, K): inputs always zero
    diag[dead] = 1.0
    W[np.broadcast_to(dead[:, None, :], W.shape)] = 0.0
    perm = None
    if act_order:
        perm = np.argsort(-diag, axis=1, kind="stable")               # (G, K): decreasing H diagonal
        W, S, Z, F = (np.take_along_axis(t, perm[:, None, :], axis=2) for t in (W, S, Z, F))
        for j in range(g):                                            # H[j][perm][:, perm], in place
            _permute(H[j], perm[j])
        diag = np.einsum("gii->gi", H)
    del diag
    h_owned.append(H)
    del H
    # (G, K, K) upper, float64; each block's rows are taken to float32 as the block needs them
    # (the same floats as one float32 copy, without that copy next to the float64 factor)
    hinv64 = _inverse_cholesky(h_owned, percdamp)
    Q = np.zeros_like(W)
    feedback = np.empty_like(W)  # one buffer for every block's feedback product (no heap churn)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        rows = hinv64[:, i1:i2, i1:].astype(np.float32)                # (G, b, K - i1)
        W1 = W[:, :, i1:i2].copy()
        E1 = np.zeros_like(W1)
        Hb = rows[:, :, :i2 - i1]
        for i in range(i2 - i1):
            col, s, z = W1[:, :, i], S[:, :, i1 + i], Z[:, :, i1 + i]   # (G, O)
            q = np.clip(np.round(col / s) + z, qmin, qmax)
            if fixed is not None:
                f = F[:, :, i1 + i]
                q = np.where(np.isnan(f), q, f)
            Q[:, :, i1 + i] = q
            err = (col - s * (q - z)) / Hb[:, i, i][:, None]            # (G, O)
            W1[:, :, i:] -= err[:, :, None] * Hb[:, i, i:][:, None, :]
            E1[:, :, i] = err
        fb = np.matmul(E1, rows[:, :, i2 - i1:], out=feedback[:, :, :k - i2])
        W[:, :, i2:] -= fb
    del feedback, hinv64
    if perm is not None:
        out = np.empty_like(Q)
        np.put_along_axis(out, np.broadcast_to(perm[:, None, :], Q.shape), Q, axis=2)
        Q = out
    return Q.astype(np.int64)


def _permute(a: np.ndarray, perm: np.ndarray) -> None:
    """a <- a[perm][:, perm] in place (the same values), following the permutation's cycles with one
    row or column of temporary memory instead of a copy of a."""
    for axis in (0, 1):
        view = a if axis == 0 else a.T
        done = np.zeros(len(perm), dtype=bool)
        for start in range(len(perm)):
            if done[start]:
                continue
            done[start] = True
            if perm[start] == start:
                continue
            first = view[start].copy()
            i = start
            while perm[i] != start:                                   # new[i] = old[perm[i]]
                view[i] = view[perm[i]]
                i = perm[i]
                done[i] = True
            view[i] = first


def _inverse_cholesky(h_owned: list[np.ndarray], percdamp: float) -> np.ndarray:
    """Upper Cholesky factor U of (H + damp I)^-1 (U^T U = (H + damp I)^-1), raising the dampening
    until it exists; H (G, K, K) float64 is taken over from the one-element list `h_owned` and its
    diagonal dampened in place.

    With J the order-reversing permutation: if J (H + damp I) J = L L^T (L lower), then
    H + damp I = V V^T with V = J L J upper, so (H + damp I)^-1 = V^-T V^-1 and U = V^-1 = J L^-1 J:
    one Cholesky factorisation and one triangular inverse. One matrix (G = 1: a layer's whole H, up
    to 170 MB) is factorised and inverted in its own memory, block by block; grouped layers (small
    K) go through numpy.linalg."""
    H = h_owned.pop()
    diag = np.einsum("gii->gi", H)
    base = diag.copy()
    mean_diag = base.mean(axis=1, keepdims=True)                      # (G, 1)
    one = H.shape[0] == 1 and H.flags.c_contiguous
    saved = _diagonal_blocks(H[0]) if one else None
    damp = percdamp
    for _ in range(6):
        diag[...] = base + damp * mean_diag
        if one:
            a = H[0]
            _flip(a)                                                  # J H J (the dampened diagonal too)
            if _cholesky_lower(a):
                del diag
                _invert_lower(a)
                return H[:, ::-1, ::-1]                               # J L^-1 J
            _restore(a, saved)                                        # back to H (undamped diagonal below)
            _flip(a)
        else:
            try:
                L = np.linalg.cholesky(H[:, ::-1, ::-1])              # J H J = L L^T
            except np.linalg.LinAlgError:
                L = None
            if L is not None:
                del H, diag
                return np.linalg.inv(L[:, ::-1, ::-1])                # V = J L J upper; U = V^-1 upper
        log.warning("gptq: H + %.3g mean(diag) I is not positive definite; dampening more", damp)
        damp *= 10.0
    raise ConfigError("GPTQ: the Hessian stays singular even with heavy dampening; raise percdamp.")


BLOCK = 512  # rows and columns per step of the in-place factorisation (temporaries: K x BLOCK)


def _blocks(k: int) -> list[tuple[int, int]]:
    return [(j, min(j + BLOCK, k)) for j in range(0, k, BLOCK)]


def _workspace(a: np.ndarray) -> np.ndarray:
    """K x BLOCK scratch for the block steps on `a`: the same memory for every step, where
    temporaries of changing sizes would fragment the heap (up to 200 MB more resident on ResNet-18)."""
    return np.empty((a.shape[0], BLOCK), dtype=a.dtype)


def _flip(a: np.ndarray) -> None:
    """a <- J a J in place (rows and columns reversed), one block of rows at a time."""
    k = a.shape[0]
    half = (k + 1) // 2
    top = np.empty((min(BLOCK, half), k), dtype=a.dtype)
    for j in range(0, half, BLOCK):
        e = min(j + BLOCK, half)
        np.copyto(top[:e - j], a[j:e, ::-1])
        a[j:e] = a[k - e:k - j][::-1, ::-1]
        a[k - e:k - j] = top[:e - j][::-1]


def _diagonal_blocks(a: np.ndarray) -> list[np.ndarray]:
    """Copies of the diagonal blocks of J a J (what `_cholesky_lower` may overwrite above the diagonal)."""
    k = a.shape[0]
    return [a[k - e:k - j, k - e:k - j][::-1, ::-1].copy() for j, e in _blocks(k)]


def _restore(a: np.ndarray, saved: list[np.ndarray]) -> None:
    """Undo a failed `_cholesky_lower`: the strict upper triangle off the diagonal blocks is untouched,
    the diagonal blocks were saved."""
    for (j, e), block in zip(_blocks(a.shape[0]), saved):
        a[j:e, j:e] = block
        a[e:, j:e] = a[j:e, e:].T


def _cholesky_lower(a: np.ndarray) -> bool:
    """a (K, K) symmetric, C-contiguous -> its lower Cholesky factor in place, strict upper triangle
    zeroed (right-looking blocked algorithm; only the lower triangle is read). False if a is not
    positive definite: its lower triangle is then partly overwritten (see `_restore`)."""
    k = a.shape[0]
    ws = _workspace(a)
    for j, e in _blocks(k):
        try:
            l11 = np.linalg.cholesky(a[j:e, j:e])
        except np.linalg.LinAlgError:
            return False
        a[j:e, j:e] = l11
        if e < k:
            panel = a[e:, j:e]
            panel[...] = np.matmul(panel, np.linalg.inv(l11).T, out=ws[:k - e, :e - j])  # L21 = A21 L11^-T
            for c, ce in _blocks(k - e):                              # trailing A22 -= L21 L21^T, lower part
                a[e + c:, e + c:e + ce] -= np.matmul(panel[c:], panel[c:ce].T, out=ws[:k - e - c, :ce - c])
    for j, e in _blocks(k):
        a[j:e, e:] = 0.0
        a[j:e, j:e] = np.tril(a[j:e, j:e])
    return True


def _invert_lower(a: np.ndarray) -> None:
    """a (K, K) lower triangular (zeros above) -> its inverse in place, last block column first:
    X11 = L11^-1, X21 = -X22 L21 X11."""
    k = a.shape[0]
    ws = _workspace(a)
    for j, e in reversed(_blocks(k)):
        x11 = np.tril(np.linalg.inv(a[j:e, j:e]))
        if e < k:
            x21 = np.negative(np.matmul(a[e:, e:], a[e:, j:e], out=ws[:k - e, :e - j]), out=ws[:k - e, :e - j])
            np.matmul(x21, x11, out=a[e:, j:e])                       # sign flips are exact: -(X) @ x11
        a[j:e, j:e] = x11
