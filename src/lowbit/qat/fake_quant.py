"""Fake quantization for training: quantize-dequantize in the forward pass, straight-through
gradients in the backward pass, and optionally learned step sizes.

- STE (Bengio, Leonard & Courville 2013): round() passes the gradient through unchanged; values
  clipped by the grid get none.
- LSQ (Esser et al. 2020, "Learned Step Size Quantization"): the step size s is a parameter; its
  gradient, -x/s + round(x/s) inside the grid and qmin/qmax - zp outside, is scaled by
  g = 1 / sqrt(N * Qp) (N: elements the step applies to per sample, Qp: positive levels) so step
  sizes learn at the pace of the weights. The one knob is whether steps are learned at all
  (`learn_scale`); their learning rate follows the optimizer's.

The forward arithmetic is that of ONNX QuantizeLinear / DequantizeLinear in float32:
q = clip(round_half_even(x / s) + zp, qmin, qmax), y = (q - zp) * s, so what trains is what ships.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from lowbit.core.granularity import PerChannel, PerGroup, PerTensor
from lowbit.core.qparams import MIN_SCALE, QParams


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round half to even in the forward pass, identity in the backward pass (STE)."""
    return (torch.round(x) - x).detach() + x


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """x in the forward pass; its gradient multiplied by g in the backward pass (LSQ)."""
    return (x - x * g).detach() + x * g


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
                  ) -> torch.Tensor:
    """(clip(round(x / scale) + zp, qmin, qmax) - zp) * scale with STE; scale, zp broadcast to x."""
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
        return _FakeQuantize.apply(x, scale, zero_point, qmin, qmax)
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def _reduce_to(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to `shape` (the scale's shape)."""
    if g.shape == shape:
        return g
    dims = tuple(i for i in range(g.dim()) if i >= g.dim() - len(shape) and shape[i - g.dim() + len(shape)] == 1
                 or i < g.dim() - len(shape))
    return g.sum(dim=dims, keepdim=True).reshape(shape)


class _FakeQuantize(torch.autograd.Function):
    """The same forward as above, saving only x for the backward pass (the STE and LSQ gradients are
    recomputed from it): training memory is that of the float graph, not five tensors per quantizer."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):  # noqa: ANN001 - autograd's signature
        ctx.save_for_backward(x, scale, zero_point)
        ctx.bounds = (qmin, qmax)
        q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
        return (q - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        x, scale, zp = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        xs = x / scale
        r = torch.round(xs)
        q = r + zp
        below, above = q < qmin, q > qmax
        inside = ~(below | above)
        gx = grad * inside if ctx.needs_input_grad[0] else None
        gs = None
        if ctx.needs_input_grad[1]:  # LSQ: round(x/s) - x/s inside the grid, the clipped level outside
            ds = torch.where(inside, r - xs, torch.where(below, qmin - zp, qmax - zp).to(x.dtype))
            gs = _reduce_to(grad * ds, scale.shape)
        return gx, gs, None, None, None


def _fused_fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None,
                         qmin: int, qmax: int) -> torch.Tensor:
    """Training's fake quantization: torch's fused kernels with the same STE and LSQ gradients, 3-4x
    faster than the composed ops. They multiply by 1/scale, so a value on a rounding tie may land
    one step from QuantizeLinear's (a few in a million); evaluation and export use `fake_quantize`."""
    if axis is None:
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale.reshape(1), zero_point.reshape(1),
                                                                 qmin, qmax, 1.0)
    return torch._fake_quantize_learnable_per_channel_affine(x, scale, zero_point, axis % x.dim(), qmin, qmax, 1.0)


class FakeQuant(nn.Module):
    """One quantizer of the plan, trainable: per-tensor (activations) or per-channel (weights).

    Initialised from a `QParams` (the PTQ plan's); `qparams()` gives the learned ones back. The zero
    point is kept fixed (an integer of the plan); only the step size learns (LSQ).
    """

    def __init__(self, qparams: QParams, learn_scale: bool = True, activation: bool = False) -> None:
        super().__init__()
        self.dtype = qparams.dtype
        self.granularity = qparams.granularity
        self.narrow = qparams.narrow
        self.qmin, self.qmax = qparams.dtype.bounds(qparams.narrow)
        # blocks: scales have the weight's shape with the axis divided by the block size
        self.scale_shape, self.zp_shape = np.asarray(qparams.scale).shape, np.asarray(qparams.zero_point).shape
        scale = torch.as_tensor(np.asarray(qparams.scale, dtype=np.float32)).reshape(-1)
        zp = torch.as_tensor(np.asarray(qparams.zero_point, dtype=np.float32)).reshape(-1)
        if learn_scale:
            self.scale = nn.Parameter(scale.clone())
        else:
            self.register_buffer("scale", scale.clone())
        self.register_buffer("zero_point", zp.clone())
        self.learn_scale = learn_scale
        # LSQ gradient scale 1 / sqrt(N * Qp): Qp positive levels; N elements one step covers, counted per
        # sample for activations so that the gradient does not depend on the (per-rank) batch size
        self.activation = activation
        self.qp = max(1, self.qmax - int(zp.min().item()))
        self.enabled = True
        self.drop = 0.0  # QDrop (Wei et al. 2022): while training, this fraction of elements stays float

    @property
    def axis(self) -> int | None:
        return self.granularity.axis if isinstance(self.granularity, PerChannel) else None

    def _shaped(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return p.reshape(())
        view = [1] * x.dim()
        view[self.axis % x.dim()] = -1
        return p.reshape(view)

    def _blocked(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if p.numel() == 1:
            return p.reshape(())
        axis, size = self.granularity.axis % x.dim(), self.granularity.size
        blocks = list(x.shape)
        blocks[axis] = -(-x.shape[axis] // size)
        return p.reshape(blocks).repeat_interleave(size, dim=axis).narrow(axis, 0, x.shape[axis])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        scale = self.scale.clamp_min(float(MIN_SCALE))
        if self.learn_scale and self.training:
            n = x[0].numel() if self.activation and x.dim() > 0 else x.numel() // max(1, scale.numel())
            scale = grad_scale(scale, 1.0 / math.sqrt(max(1, n) * self.qp))
        if isinstance(self.granularity, PerGroup):  # blocks along the axis: each step repeated over its block
            return fake_quantize(x, self._blocked(scale, x), self._blocked(self.zero_point, x), self.qmin, self.qmax)
        if self.training and torch.is_grad_enabled() and x.dtype == torch.float32:
            y = _fused_fake_quantize(x, scale, self.zero_point, self.axis, self.qmin, self.qmax)
        else:
            y = fake_quantize(x, self._shaped(scale, x), self._shaped(self.zero_point, x), self.qmin, self.qmax)
        if self.drop > 0 and self.training:
            y = torch.where(torch.rand_like(x) < self.drop, x, y)
        return y

    def qparams(self) -> QParams:
        """The current (learned) quantizer as lowbit QParams, for the plan."""
        scale = self.scale.detach().clamp_min(float(MIN_SCALE)).cpu().numpy().astype(np.float32)
        zp = self.zero_point.detach().cpu().numpy().astype(np.int64)
        if isinstance(self.granularity, PerTensor):
            scale, zp = scale.reshape(()), zp.reshape(())
        elif isinstance(self.granularity, PerGroup):
            scale, zp = scale.reshape(self.scale_shape), zp.reshape(self.zp_shape)
        return QParams(self.dtype, self.granularity, scale, zp, self.narrow)

    def extra_repr(self) -> str:
        return (f"{self.dtype.name}, {self.granularity.kind}, channels={self.scale.numel()}, "
                f"learn_scale={self.learn_scale}")
