"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``) in plain torch.

29 convolutions, 5.6 M parameters, a 150x150 aligned RGB face chip in, a 128-d embedding out;
faces match when the Euclidean distance of their embeddings is below 0.6 (99.38% on LFW).
The weights are dlib's, as converted to TF.js by npm ``@vladmandic/face-api@1.7.15`` (stored there
as uint8 with a per-tensor scale and min); the topology follows face-api's
``src/faceRecognitionNet/`` and dlib's ``dnn_face_recognition_ex.cpp``:

    input (x - mean_rgb) / 256          dlib's input_rgb_image; face-api divides by 255 (see below)
    conv 7x7/2 valid, affine, relu      conv32_down
    max pool 3x3/2 valid
    3 x residual(32)                    conv32_1..3
    residual_down(64) + 3 x residual    conv64_down, conv64_1..3
    residual_down(128) + 2 x residual   conv128_down, conv128_1..2
    residual_down(256) + 2 x residual   conv256_down, conv256_1..2
    residual_down(256)                  conv256_down_out
    global mean pool, fc 256 -> 128 (no bias, no normalisation)

Each "conv" is a convolution with bias followed by dlib's ``affine`` layer (its batch norm frozen
to a per-channel scale and shift). ``residual_down``'s skip is a 2x2/2 average pool, zero-padded in
channels; where the strided 3x3 conv gives a smaller map than the pool (8 -> 3 vs 4, 4 -> 1 vs 2),
dlib's ``add_prev`` treats the missing bottom/right cells as zeros, and so does this port.

Paper: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; the network is
King's, http://blog.dlib.net/2017/02/high-quality-face-recognition-with-deep.html.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lowbit.demo.zoo._face_weights import read_tfjs_weights
from lowbit.demo.faces_data import FACES_SETUP_HINT as SETUP_HINT
from lowbit.demo.faces_data import faces_data_dir
from lowbit.errors import ModelError

MEAN_RGB = (122.782, 117.001, 104.298)  # dlib's input_rgb_image averages, in 0..255 pixel units
INPUT_SCALE = 256.0  # dlib divides by 256.0; face-api divides by 255 (same cosine to dlib: 0.9997)
CHIP_SIZE = 150
EMBEDDING_DIM = 128
MATCH_THRESHOLD = 0.6  # dlib's Euclidean distance threshold for "same person"

# (name, output channels, stride-2 block?) in the order of face-api's FaceRecognitionNet
_BLOCKS = [
    ("conv32_1", 32, False), ("conv32_2", 32, False), ("conv32_3", 32, False),
    ("conv64_down", 64, True), ("conv64_1", 64, False), ("conv64_2", 64, False), ("conv64_3", 64, False),
    ("conv128_down", 128, True), ("conv128_1", 128, False), ("conv128_2", 128, False),
    ("conv256_down", 256, True), ("conv256_1", 256, False), ("conv256_2", 256, False),
    ("conv256_down_out", 256, True),
]


def face_api_manifest() -> Path:
    """Path of face-api's ``face_recognition_model-weights_manifest.json``, or ModelError with the hint."""
    path = faces_data_dir() / "face-api" / "model" / "face_recognition_model-weights_manifest.json"
    if not path.is_file():
        raise ModelError(f"face-api's face recognition weights not found at {path}. {SETUP_HINT}")
    return path


class Affine(nn.Module):
    """dlib's ``affine`` layer: y = x * weight + bias per channel (a frozen batch norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]  # x: (N, C, H, W)


class ConvAffine(nn.Module):
    """Convolution with bias, then ``Affine``; 'same' padding at stride 1, 'valid' at stride 2 (dlib's)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=0 if stride > 1 else kernel // 2)
        self.scale = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.conv(x))


class Residual(nn.Module):
    """relu(skip + affine(conv3x3(relu(affine(conv3x3/stride(x)))))); the skip is x or avg_pool2x2(x)."""

    def __init__(self, cin: int, cout: int, down: bool, size: int) -> None:
        super().__init__()
        self.down = down
        self.conv1 = ConvAffine(cin, cout, 3, 2 if down else 1)
        self.conv2 = ConvAffine(cout, cout, 3, 1)
        self.pad_channels = cout - cin
        # spatial sizes are fixed by the 150x150 input: precomputed so the ONNX graph has no Shape ops
        self.pad_hw = size // 2 - ((size - 3) // 2 + 1) if down else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        if not self.down:
            return F.relu(out + x)
        skip = F.avg_pool2d(x, 2, 2)
        if self.pad_channels:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.pad_channels))  # zero channels at the end
        if self.pad_hw:
            out = F.pad(out, (0, self.pad_hw, 0, self.pad_hw))  # dlib's add_prev: missing cells are 0
        return F.relu(out + skip)


class FaceDescriptor(nn.Module):
    """dlib's face descriptor; input (N, 3, 150, 150) from ``chip_to_input``, output (N, 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv32_down = ConvAffine(3, 32, 7, 2)
        size = ((CHIP_SIZE - 7) // 2 + 1 - 3) // 2 + 1  # 150 -> conv 72 -> max pool 35
        cin = 32
        for name, cout, down in _BLOCKS:
            self.add_module(name, Residual(cin, cout, down, size))
            size, cin = (size // 2 if down else size), cout
        self.fc = nn.Linear(256, EMBEDDING_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv32_down(x)), 3, 2)  # (N, 32, 35, 35)
        for name, _, _ in _BLOCKS:
            x = getattr(self, name)(x)  # ends at (N, 256, 2, 2)
        return self.fc(x.mean(dim=(2, 3)))  # (N, 128), not normalised (dlib's embeddings are raw)


def _torch_name(tfjs_name: str) -> tuple[str, bool]:
    """'conv64_1/conv1/scale/weights' -> ('conv64_1.conv1.scale.weight', is_conv_filter)."""
    parts = tfjs_name.split("/")
    leaf = {"filters": "weight", "bias": "bias", "weights": "weight", "biases": "bias", "fc": "weight"}[parts[-1]]
    return ".".join(parts[:-1] + [leaf]) if len(parts) > 1 else "fc.weight", parts[-1] == "filters"


def state_dict_from_tfjs(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """face-api's TF.js tensors -> a ``FaceDescriptor`` state dict (HWIO filters -> OIHW, fc transposed)."""
    state = {}
    for name, value in weights.items():
        key, is_filter = _torch_name(name)
        if is_filter:
            value = value.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        elif key == "fc.weight":
            value = value.T  # face-api computes x @ fc with fc (256, 128); nn.Linear wants (128, 256)
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return state


def _state() -> dict[str, torch.Tensor]:
    return state_dict_from_tfjs(read_tfjs_weights(face_api_manifest()))


def face_descriptor() -> nn.Module:
    """dlib's face descriptor in eval mode, with face-api's copy of dlib's weights.

    >>> model = face_descriptor()
    >>> model(torch.zeros(2, 3, 150, 150)).shape
    torch.Size([2, 128])
    """
    model = FaceDescriptor()
    model.load_state_dict(_state(), strict=True)  # 117 tensors, all used
    return model.eval()
