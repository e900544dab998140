"""Step 2: PTQ and QAT of the trained CNN, measured on the 10,000 test images; writes the table.

    .venv/bin/python examples/fashion_mnist/train_fp32.py      # once: out/fp32.pt
    .venv/bin/python examples/fashion_mnist/qat.py --epochs 1

FP32, PTQ INT8, PTQ W4A8 (4-bit per-channel weights, 8-bit activations) through `lowbit.quantize`,
and QAT W4A8 through `lowbit.qat` (prepare -> fit -> export), every accuracy measured in ONNX
Runtime except the fake-quant module's own. Writes out/results.json and the table in README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np
import torch

import lowbit
import lowbit.qat
from common import HERE, OUT, SmallCNN, loader, onnx_accuracy, tensors
from lowbit import PerChannel, QuantConfig, Scheme, int4
from lowbit.load import export_torch

W4A8 = QuantConfig(weights=Scheme(int4, PerChannel(0), symmetric=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--calib-n", type=int, default=1000)
    p.add_argument("--bn", choices=("fold", "batch"), default="fold")
    p.add_argument("--train-n", type=int, default=60000, help="training images QAT sees per epoch")
    args = p.parse_args()
    torch.manual_seed(0)
    model = SmallCNN()
    model.load_state_dict(torch.load(OUT / "fp32.pt", weights_only=True))
    model.eval()
    x_train, y_train = tensors("train")
    x_test, y_test = tensors("test")
    calib = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))[:args.calib_n]]
    fp32 = export_torch(model, x_test[:1])
    rows = {"FP32": onnx_accuracy(fp32, x_test, y_test)}
    print(f"FP32: {rows['FP32']:.2f}%")
    for label, cfg in (("PTQ INT8", "int8"), ("PTQ W4A8", W4A8)):
        r = lowbit.quantize(fp32, cfg, calib.numpy(), verify=None)
        rows[label] = onnx_accuracy(r.model, x_test, y_test)
        print(f"{label}: {rows[label]:.2f}%")

    t0 = time.perf_counter()
    qat = lowbit.qat.prepare(model, W4A8, calib, bn=args.bn, freeze_bn_after=300 if args.bn == "batch" else None)
    test_batches = [(x_test[i:i + 1000], y_test[i:i + 1000]) for i in range(0, len(x_test), 1000)]
    train = loader(x_train[:args.train_n], y_train[:args.train_n], 128, shuffle=True)
    fit = lowbit.qat.fit(qat, train, epochs=args.epochs, lr=args.lr,
                         eval_data=test_batches, on_epoch=lambda e: print(f"QAT epoch {e['epoch']}: {e}"))
    qat_seconds = time.perf_counter() - t0
    shipped = lowbit.qat.export(qat, x_test[:1000], OUT / "qat_w4a8.onnx")
    rows["QAT W4A8 (fake-quant, torch)"] = fit.accuracy
    rows["QAT W4A8 (exported, ONNX Runtime)"] = onnx_accuracy(shipped.model, x_test, y_test)
    print(f"QAT W4A8: fake-quant {fit.accuracy:.2f}%, exported {rows['QAT W4A8 (exported, ONNX Runtime)']:.2f}%, "
          f"parity {shipped.parity}")
    results = {"accuracy_percent": rows, "qat": {"epochs": args.epochs, "lr": args.lr, "bn": args.bn,
                                                 "train_n": args.train_n, "seconds": qat_seconds, "history": fit.history,
                                                 "export_parity": shipped.parity}}
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    write_table(rows, args)


def write_table(rows: dict[str, float], args: argparse.Namespace) -> None:
    fp32 = rows["FP32"]
    lines = ["| model | test accuracy (10,000 images) | vs FP32 |", "|---|---:|---:|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v:.2f}% | {v - fp32:+.2f} |")
    lines.append("")
    lines.append(f"QAT: {args.epochs} epoch(s) over {args.train_n} training images, Adam lr {args.lr} with cosine "
                 f"decay, LSQ step sizes, BN '{args.bn}'; calibration: {args.calib_n} training images.")
    readme = HERE / "README.md"
    text = readme.read_text()
    block = "<!-- results -->\n" + "\n".join(lines) + "\n<!-- /results -->"
    readme.write_text(re.sub(r"<!-- results -->.*<!-- /results -->", lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
