"""Shared by the Fashion-MNIST examples: the small CNN, data as tensors, and ONNX evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowbit.demo.datasets import fashion_mnist

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


class SmallCNN(nn.Module):
    """Three Conv-BN-ReLU blocks (16, 32, 32 channels) with max pooling and a linear head: 17k params."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(1, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2),
                                      block(32, 32), nn.MaxPool2d(2))
        self.classifier = nn.Linear(32 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def tensors(split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N, 1, 28, 28) float32 and int64 labels of a split."""
    images, labels = fashion_mnist.load(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(fashion_mnist.as_float(images)), torch.from_numpy(labels.astype(np.int64))


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size,
                                       shuffle=shuffle, generator=gen)


def onnx_correct(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Per test image, whether an ONNX model (path, bytes or ModelProto) classifies it right in ONNX
    Runtime: bool (N,). Kept per image so two models can be compared pairwise (McNemar)."""
    import onnx
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    hits = [sess.run(None, {name: x[i:i + batch_size].numpy()})[0].argmax(1) == y[i:i + batch_size].numpy()
            for i in range(0, len(x), batch_size)]
    return np.concatenate(hits)


def onnx_accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy (%) of an ONNX model (path, bytes or ModelProto) in ONNX Runtime."""
    return 100.0 * float(onnx_correct(model, x, y, batch_size).mean())
