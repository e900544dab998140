"""Label-free augmentation of image inputs, so that a few hundred calibration photos go further.

The teacher (FP32) labels every augmented view itself, so any view is a valid training sample:
random resized crops (scale 35-100% of the area, aspect 3/4-4/3, resampled to the input's size, as
in Szegedy et al. 2015) and horizontal flips; colour jitter (brightness, contrast, saturation) only
when asked for (`jitter` > 0): on MobileNetV2 its views had ~9x the calibration crops' loss and
training on them made the held-out loss worse.
It works on the model's preprocessed tensors (N, C, H, W), so it needs no knowledge of the
preprocessing: crops and flips commute with per-channel normalisation, and the jitter is an affine
change per image, which normalisation maps to another affine change.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def is_image(shape: tuple[int, ...]) -> bool:
    """(N, 1 or 3, H, W) with H, W >= 16: what these augmentations apply to."""
    return len(shape) == 4 and shape[1] in (1, 3) and shape[2] >= 16 and shape[3] >= 16


def augment_images(x: torch.Tensor, gen: torch.Generator, min_area: float = 0.35, jitter: float = 0.0
                   ) -> torch.Tensor:
    """A random view of each image of `x` (N, C, H, W); `gen` makes it reproducible (same on every rank).
    `jitter` > 0 adds colour jitter of that strength (0.2: brightness, contrast and saturation +-20%)."""
    n, c, h, w = x.shape
    u = torch.rand(n, 6, generator=gen)
    area = min_area + (1.0 - min_area) * u[:, 0]
    log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    ratio = torch.exp(log_r)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / height as fractions of the image
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1.0 - sw) * (2 * u[:, 2] - 1)  # crop centre in [-1, 1] coordinates, crop inside the image
    cy = (1.0 - sh) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (n, c, h, w), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if jitter <= 0:
        return y.contiguous()
    # colour jitter: brightness (shift), contrast (scale about the image mean), saturation (towards grey)
    j = (torch.rand(n, 3, generator=gen) * 2 - 1) * jitter
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * (1 + j[:, 0].view(n, 1, 1, 1)) + mean + j[:, 1].view(n, 1, 1, 1) * std
    if c == 3:
        grey = y.mean(dim=1, keepdim=True)
        y = grey + (y - grey) * (1 + j[:, 2].view(n, 1, 1, 1))
    return y.contiguous()
