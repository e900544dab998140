"""Step 1: train the small CNN on Fashion-MNIST in FP32 (about 90% test accuracy in a few CPU minutes).

    bash scripts/setup_fashion_mnist.sh            # once: installs the Debian dataset package
    .venv/bin/python examples/fashion_mnist/train_fp32.py --epochs 4

Writes out/fp32.pt (state dict, load with torch.load(..., weights_only=True)) and out/fp32.onnx.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from common import OUT, SmallCNN, loader, tensors


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return 100.0 * float((pred == y).float().mean())


def train(epochs: int, batch_size: int = 128, lr: float = 3e-3, seed: int = 0, limit: int | None = None,
          log=print) -> SmallCNN:
    torch.manual_seed(seed)
    x, y = tensors("train", limit)
    xt, yt = tensors("test")
    model = SmallCNN()
    data = loader(x, y, batch_size, shuffle=True, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(data))
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for xb, yb in data:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
        log(f"epoch {epoch + 1}/{epochs}: test accuracy {accuracy(model, xt, yt):.2f}% "
            f"({time.perf_counter() - t0:.0f} s)")
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = train(args.epochs, seed=args.seed)
    OUT.mkdir(exist_ok=True)
    torch.save(model.state_dict(), OUT / "fp32.pt")
    from lowbit.load.model import export_torch

    (OUT / "fp32.onnx").write_bytes(export_torch(model, torch.zeros(1, 1, 28, 28)).SerializeToString())
    print(f"wrote {OUT / 'fp32.pt'} and {OUT / 'fp32.onnx'}")


if __name__ == "__main__":
    main()
