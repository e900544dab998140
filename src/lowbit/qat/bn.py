"""Batch normalization during QAT (Jacob et al. 2018, "Quantization and Training of Neural Networks
for Efficient Integer-Arithmetic-Only Inference", section 3.2).

The deployed model folds BN into the convolution, so QAT must quantize the *folded* weights. Two ways:
- 'fold' (default): BN is folded with its running statistics before QAT starts (what `prepare` does
  for every model, as PTQ does); QAT fine-tunes the folded convolution. Statistics are frozen from
  step 0: the simplest choice and the right one for short fine-tuning of a converged network.
- 'batch': each folded convolution y = conv(x, W) + b gets a BN re-introduced on conv(x, W), set to
  the identity from calibration statistics (gamma = sqrt(var + eps), beta = mean + b). While
  training, the batch statistics (all-reduced over ranks under DDP, as SyncBatchNorm) are folded
  into the weights before fake quantization, W' = W * gamma / sigma_B; after `freeze_bn_after`
  steps the running statistics are used instead. The one knob is `freeze_bn_after`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from lowbit.qat.ops import run_op

if TYPE_CHECKING:
    from lowbit.qat.graph import QATGraph

BN_MODES = ("fold", "batch")


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over all ranks, differentiable (the result of one process on the global batch)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t)
    return t


class BatchStatFold(nn.Module):
    """BN re-introduced on one folded convolution; folds batch or running statistics into it."""

    def __init__(self, weight: str, bias: str | None, channels: int, freeze_after: int, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.weight_name, self.bias_name = weight, bias
        self.eps, self.momentum, self.freeze_after = eps, momentum, freeze_after
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.collecting: list[torch.Tensor] | None = None

    @property
    def frozen(self) -> bool:
        return int(self.steps) >= self.freeze_after

    def folded(self, qat: "QATGraph", mean: torch.Tensor | None = None, var: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(W', b'): the convolution with BN folded in (running statistics unless given)."""
        w = qat.tensor(self.weight_name)
        mean = self.running_mean if mean is None else mean
        var = self.running_var if var is None else var
        k = self.gamma / torch.sqrt(var + self.eps)  # (C,)
        return w * k.reshape(-1, *([1] * (w.dim() - 1))), self.beta - k * mean

    def forward(self, qat: "QATGraph", x: torch.Tensor, attrs: dict[str, Any]) -> torch.Tensor:
        w = qat.tensor(self.weight_name)
        if self.collecting is not None:  # calibration pass: statistics of conv(x, W), output unchanged
            z = run_op("Conv", [x, w], attrs)
            self.collecting.append(torch.stack([z.sum((0, 2, 3)), (z * z).sum((0, 2, 3)),
                                                torch.full_like(z[0, :, 0, 0], z[:, 0].numel())]))
            b = qat.tensor(self.bias_name) if self.bias_name else None
            return run_op("Conv", [x, qat.quantize_weight(self.weight_name, w), b], attrs)
        if self.training and not self.frozen:
            z = run_op("Conv", [x, w], attrs)  # float convolution for the batch statistics
            s = _global_sum(torch.stack([z.sum((0, 2, 3)), (z * z).sum((0, 2, 3))]))
            n = _global_sum(torch.tensor(float(z[:, 0].numel())))
            mean = s[0] / n
            var = (s[1] / n - mean * mean).clamp_min(0)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * n / max(1.0, float(n) - 1), self.momentum)
                self.steps += 1
            wf, bf = self.folded(qat, mean, var)
        else:
            wf, bf = self.folded(qat)
        return run_op("Conv", [x, qat.quantize_weight(self.weight_name, wf), qat.quantize_bias(self.bias_name, bf)],
                      attrs)

    def finish_collecting(self, bias: torch.Tensor | None) -> None:
        """Set the BN to the identity on the calibration statistics (gamma = sigma, beta = mu + b)."""
        s = torch.stack(self.collecting).sum(0)
        self.collecting = None
        mean = s[0] / s[2]
        var = (s[1] / s[2] - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
            self.gamma.copy_(torch.sqrt(var + self.eps))
            self.beta.copy_(mean + (bias.detach() if bias is not None else 0.0))


def reintroduce_batchnorm(qat: "QATGraph", calib: Any, freeze_after: int) -> None:
    """Give every quantized 2-d convolution of `qat` a batch-statistics BN (mode 'batch')."""
    for name, op_type, ins, _outs, attrs in qat.nodes:
        if (op_type != "Conv" or ins[1] not in qat.plan.tensors or qat.tensor(ins[1]).dim() != 4
                or len(ins) < 3 or not ins[2]):  # the folded shift needs a bias to live in
            continue
        bias = ins[2] if len(ins) > 2 and ins[2] else None
        qat.add_bn_fold(name, BatchStatFold(ins[1], bias, qat.tensor(ins[1]).shape[0], freeze_after))
    folds = list(qat.bn_folds.values())
    for f in folds:
        f.collecting = []
    was_training = qat.training
    qat.eval()
    with torch.no_grad():
        for batch in calib:
            qat(*[torch.from_numpy(batch.feeds[n]) for n in qat.input_names])
    qat.train(was_training)
    for f in folds:
        bias = qat.tensor(f.bias_name)
        f.finish_collecting(bias)
        bias.requires_grad_(False)  # beta absorbed it; export writes the folded shift in its place
