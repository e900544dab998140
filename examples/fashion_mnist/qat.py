"""Step 2: PTQ and QAT of the trained CNN, measured on the 10,000 test images; writes the table.

    .venv/bin/python examples/fashion_mnist/train_fp32.py      # once: out/fp32.pt
    .venv/bin/python examples/fashion_mnist/qat.py --epochs 1

FP32, PTQ INT8, PTQ W4A8 (4-bit per-channel weights, 8-bit activations) through `lowbit.quantize`,
and QAT W4A8 through `lowbit.qat` (prepare -> fit -> export), every accuracy measured in ONNX
Runtime except the fake-quant module's own. Writes out/results.json and out/results.md (the README
quotes a run, with its seeds; `seeds.py` checks that the QAT-vs-PTQ gain holds across seeds).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import lowbit
import lowbit.qat
from common import OUT, SmallCNN, loader, onnx_correct, tensors
from lowbit import PerChannel, QuantConfig, Scheme, int4
from lowbit.load.model import export_torch

W4A8 = QuantConfig(weights=Scheme(int4, PerChannel(0), symmetric=True))


def evaluate(model: SmallCNN, args: argparse.Namespace, seed: int, log=print) -> dict:
    """FP32, PTQ INT8, PTQ W4A8 and QAT W4A8 of one trained FP32 `model`, with QAT seeded by `seed`.
    Returns {"accuracy_percent": {row: %}, "correct": {row: bool per test image}, "qat": {...}}."""
    torch.manual_seed(seed)
    x_train, y_train = tensors("train")
    x_test, y_test = tensors("test")
    calib = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))[:args.calib_n]]
    fp32 = export_torch(model, x_test[:1])
    rows, correct = {}, {}

    def record(label: str, onnx_model) -> None:
        correct[label] = onnx_correct(onnx_model, x_test, y_test)
        rows[label] = 100.0 * float(correct[label].mean())
        log(f"{label}: {rows[label]:.2f}%")

    record("FP32", fp32)
    for label, cfg in (("PTQ INT8", "int8"), ("PTQ W4A8", W4A8)):
        record(label, lowbit.quantize(fp32, cfg, calib.numpy(), verify=None).model)
    t0 = time.perf_counter()
    qat = lowbit.qat.prepare(model, W4A8, calib, bn=args.bn, freeze_bn_after=300 if args.bn == "batch" else None)
    test_batches = [(x_test[i:i + 1000], y_test[i:i + 1000]) for i in range(0, len(x_test), 1000)]
    train = loader(x_train[:args.train_n], y_train[:args.train_n], 128, shuffle=True, seed=seed)
    fit = lowbit.qat.fit(qat, train, epochs=args.epochs, lr=args.lr,
                         eval_data=test_batches, on_epoch=lambda e: log(f"QAT epoch {e['epoch']}: {e}"))
    qat_seconds = time.perf_counter() - t0
    OUT.mkdir(exist_ok=True)
    shipped = lowbit.qat.export(qat, x_test[:1000], OUT / f"qat_w4a8-seed{seed}.onnx")
    rows["QAT W4A8 (fake-quant, torch)"] = fit.accuracy
    record("QAT W4A8 (exported, ONNX Runtime)", shipped.model)
    return {"accuracy_percent": rows, "correct": correct,
            "qat": {"seed": seed, "epochs": args.epochs, "lr": args.lr, "bn": args.bn, "train_n": args.train_n,
                    "calib_n": args.calib_n, "seconds": qat_seconds, "history": fit.history,
                    "export_parity": shipped.parity}}


def add_qat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--calib-n", type=int, default=1000)
    p.add_argument("--bn", choices=("fold", "batch"), default="fold")
    p.add_argument("--train-n", type=int, default=60000, help="training images QAT sees per epoch")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_qat_args(p)
    p.add_argument("--fp32", default=str(OUT / "fp32.pt"), help="the trained FP32 state dict (train_fp32.py)")
    p.add_argument("--seed", type=int, default=0, help="QAT's seed (initial shuffle and torch)")
    args = p.parse_args()
    model = SmallCNN()
    model.load_state_dict(torch.load(args.fp32, weights_only=True))
    model.eval()
    result = evaluate(model, args, args.seed)
    result.pop("correct")
    result["fp32_checkpoint"] = args.fp32
    (OUT / "results.json").write_text(json.dumps(result, indent=1))
    (OUT / "results.md").write_text(table(result["accuracy_percent"], args) + "\n")
    print(f"wrote {OUT / 'results.json'} and {OUT / 'results.md'}")


def table(rows: dict[str, float], args: argparse.Namespace) -> str:
    fp32 = rows["FP32"]
    lines = ["| model | test accuracy (10,000 images) | vs FP32 |", "|---|---:|---:|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v:.2f}% | {v - fp32:+.2f} |")
    lines.append("")
    lines.append(f"QAT: {args.epochs} epoch(s) over {args.train_n} training images, Adam lr {args.lr} with cosine "
                 f"decay, LSQ step sizes, BN '{args.bn}', seed {args.seed}; calibration: {args.calib_n} training "
                 "images.")
    return "\n".join(lines)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
