"""Step 3: does QAT's gain over PTQ W4A8 hold beyond one lucky seed?

    .venv/bin/python examples/fashion_mnist/seeds.py --fp32-seeds 0,1,2 --qat-seeds 0,1

Trains one FP32 model per FP32 seed (train_fp32.py's recipe), then for each QAT seed runs the
same PTQ and QAT as qat.py, all on the 10,000 test images. Each QAT-vs-PTQ difference is tested
pairwise per image (exact McNemar test on the images where the two disagree): a gain whose
p-value is above 0.05 is reported as not significant. Writes out/seeds.json and out/seeds.md.
"""

from __future__ import annotations

import argparse
import json
from math import comb

import numpy as np

from common import OUT
from qat import add_qat_args, evaluate
from train_fp32 import train

PTQ, QAT = "PTQ W4A8", "QAT W4A8 (exported, ONNX Runtime)"


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of 'a and b are equally accurate' from per-image hits."""
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_qat_args(p)
    p.add_argument("--fp32-seeds", default="0,1,2")
    p.add_argument("--qat-seeds", default="0,1")
    p.add_argument("--fp32-epochs", type=int, default=3)
    args = p.parse_args()
    runs = []
    for fs in (int(s) for s in args.fp32_seeds.split(",")):
        model = train(args.fp32_epochs, seed=fs)
        for qs in (int(s) for s in args.qat_seeds.split(",")):
            r = evaluate(model, args, qs)
            hits = r.pop("correct")
            acc = r["accuracy_percent"]
            runs.append({"fp32_seed": fs, "qat_seed": qs, "accuracy_percent": acc,
                         "qat_minus_ptq": acc[QAT] - acc[PTQ], "qat_minus_fp32": acc[QAT] - acc["FP32"],
                         "mcnemar_p": mcnemar_p(hits[QAT], hits[PTQ])})
            print(json.dumps(runs[-1]))
    gains = np.array([r["qat_minus_ptq"] for r in runs])
    summary = {"runs": runs, "settings": {k: getattr(args, k) for k in ("epochs", "lr", "bn", "train_n", "calib_n",
                                                                        "fp32_epochs")},
               "gain_mean": float(gains.mean()), "gain_min": float(gains.min()), "gain_max": float(gains.max()),
               "significant_runs": sum(r["mcnemar_p"] < 0.05 and r["qat_minus_ptq"] > 0 for r in runs)}
    OUT.mkdir(exist_ok=True)
    (OUT / "seeds.json").write_text(json.dumps(summary, indent=1))
    lines = ["| FP32 seed | QAT seed | FP32 | PTQ W4A8 | QAT W4A8 | QAT - PTQ (points) | McNemar p |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        a = r["accuracy_percent"]
        lines.append(f"| {r['fp32_seed']} | {r['qat_seed']} | {a['FP32']:.2f}% | {a[PTQ]:.2f}% | {a[QAT]:.2f}% | "
                     f"{r['qat_minus_ptq']:+.2f} | {r['mcnemar_p']:.3g} |")
    lines.append(f"\nQAT - PTQ: mean {summary['gain_mean']:+.2f}, range {summary['gain_min']:+.2f} to "
                 f"{summary['gain_max']:+.2f} points; significant (p < 0.05) in {summary['significant_runs']} of "
                 f"{len(runs)} runs.")
    (OUT / "seeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
