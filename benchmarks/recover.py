"""Recover benchmark: PTQ vs PTQ + `--recover` on MobileNetV2 (real ImageNet weights, real photos).

One command:
    .venv/bin/python benchmarks/recover.py [--presets int8,w4a8] [--budget 10m] [--features 0,8] [--calib 256]
        [--augment] [--patience N] [--oracle] [--out DIR]

Per preset, each quantization runs alone in a fresh subprocess (its wall time and peak RSS are the
child's own); then, in this process, every variant is scored against FP32 on
- the benchmark's held-out crops (`photo_arrays('eval', 300)`, the photos `benchmarks/run.py` evaluates on),
- crops of photos used nowhere else (the 20 labeled ImageNet photos of foolbox, 5 crops each, never
  used for calibration, recovery or the other evaluation),
and timed in one latency run (FP32, PTQ and recovered variants together, batch 1, 1 and 2 threads).
Writes DIR/recover.md and DIR/recover.json (default DIR: benchmarks/results).

`--oracle` is a diagnosis, never a recipe: calibration and recovery then use other crops of the
evaluation photos themselves (`photo_arrays('eval', 300 + N)[300:]`, disjoint crops of the same 6
photos), an upper bound on what better calibration photos could give.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
EVAL_N = 300  # the benchmark's held-out crops: photo_arrays('eval', EVAL_N)


def _unused_photo_crops(per_photo: int = 5) -> np.ndarray:
    """Crops (random 50-100% squares, seeded) of the 20 labeled ImageNet photos, preprocessed as ImageNet."""
    from PIL import Image

    from lowbit.data import ImagePreprocess
    from lowbit.demo.zoo import labeled_imagenet_photos

    pre = ImagePreprocess.imagenet()
    rng = np.random.default_rng(2026)
    out = []
    for path, _ in labeled_imagenet_photos():
        img = Image.open(path).convert("RGB")
        w, h = img.size
        for _ in range(per_photo):
            side = int(rng.uniform(0.5, 1.0) * min(w, h))
            left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            out.append(pre.apply(img.crop((left, top, left + side, top + side)).resize((256, 256))))
    return np.stack(out)


def _quantize_child(args: tuple) -> dict:
    """Runs in a fresh process: one quantization, its wall time and peak RSS."""
    fp32, preset, calib_n, budget, features, out_path, threads, oracle, options = args
    import resource

    import torch

    torch.set_num_threads(threads)
    import lowbit
    from lowbit.demo.mobilenet import photo_arrays
    from lowbit.recover import Recover

    calib = np.stack(photo_arrays("eval", EVAL_N + calib_n)[EVAL_N:] if oracle else photo_arrays("calib", calib_n))
    t = time.perf_counter()
    res = lowbit.quantize(fp32, preset, calib, verify=None,
                          recover=Recover(budget, features=features, **options) if budget else None)
    wall = time.perf_counter() - t
    Path(out_path).write_bytes(res.model.SerializeToString())
    return {"wall_s": wall, "recover_s": res.timings.get("recover"), "peak_rss_mb":
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "recover": res.plan.config.get("recover")}


def _score(fp32: Path, models: dict[str, bytes], data: np.ndarray) -> dict[str, dict]:
    from lowbit.data import as_feeds
    from lowbit.load.model import load_model
    from lowbit.load.prepare import prepare
    from lowbit.verify import compare_models

    specs = prepare(load_model(str(fp32)), optimize=False).inputs
    accs, _ = compare_models(fp32.read_bytes(), models, as_feeds(data, specs, batch_size=32))
    return {k: {c: v for c, v in dict(a.result()).items() if c in ("top1_agreement", "sqnr_db", "kl")}
            for k, a in accs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="int8,w4a8")
    ap.add_argument("--budget", default="10m")
    ap.add_argument("--features", default="8",
                    help="comma list: one recovered variant per number of watched intermediate tensors (0: outputs only)")
    ap.add_argument("--calib", type=int, default=256, help="calibration crops (photo_arrays('calib', N))")
    ap.add_argument("--augment", action="store_true", help="Recover(augment=True): random resized crops and flips")
    ap.add_argument("--patience", type=int, default=None, help="Recover(patience=N) (default: Recover's)")
    ap.add_argument("--oracle", action="store_true",
                    help="diagnosis only: calibrate and recover on other crops of the evaluation photos themselves")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for recovery")
    ap.add_argument("--runs", type=int, default=50, help="latency rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args(argv)

    from lowbit.demo.mobilenet import export_mobilenet, photo_arrays
    from lowbit.target.cpu import this_cpu
    from lowbit.io import atomic_write_bytes
    from lowbit.verify import measure_latency

    work = Path(tempfile.mkdtemp(prefix="lowbit-recover-"))
    fp32 = work / "mobilenet_v2.onnx"
    export_mobilenet(fp32)
    runs: dict[str, dict] = {}
    options = {k: v for k, v in (("augment", args.augment), ("patience", args.patience)) if v}
    models: dict[str, bytes] = {}
    ctx = mp.get_context("spawn")
    for preset in args.presets.split(","):
        variants = [(None, 0)] + [(args.budget, int(f)) for f in args.features.split(",")]
        for budget, features in variants:
            label = f"{preset}" + (f" --recover {budget}, features {features}" if budget else "")
            path = work / f"{preset}-{f'rec{features}' if budget else 'ptq'}.onnx"
            with ctx.Pool(1) as pool:
                runs[label] = pool.apply(_quantize_child, ((str(fp32), preset, args.calib, budget, features,
                                                            str(path), args.threads, args.oracle, options),))
            models[label] = path.read_bytes()
            print(label, json.dumps({k: v for k, v in runs[label].items() if k != "recover"}), flush=True)
    held = _score(fp32, models, np.stack(photo_arrays("eval", EVAL_N)))
    unused = _score(fp32, models, _unused_photo_crops())
    eval1 = np.stack(photo_arrays("eval", 1))
    lat = measure_latency({"fp32": fp32.read_bytes(), **models}, {_input_name(fp32): eval1}, threads=(1, 2),
                          runs=args.runs)
    cpu_flags = next((set(line.split(":", 1)[1].split()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith(("flags", "Features"))), set())
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in cpu_flags]
    size0 = fp32.stat().st_size
    rows = []
    for label, b in models.items():
        r = runs[label]
        rec = r.get("recover") or {}
        rows.append({"variant": label, "eval300_top1": held[label].get("top1_agreement"),
                     "eval300_sqnr_db": held[label].get("sqnr_db"), "eval300_kl": held[label].get("kl"),
                     "unused_top1": unused[label].get("top1_agreement"), "unused_kl": unused[label].get("kl"),
                     "size_pct": 100.0 * len(b) / size0,
                     "speedup_1t": lat["fp32"]["1"]["median"] / lat[label]["1"]["median"],
                     "speedup_2t": lat["fp32"]["2"]["median"] / lat[label]["2"]["median"],
                     "quantize_s": r["wall_s"], "recover_s": r.get("recover_s"), "peak_rss_mb": r["peak_rss_mb"],
                     "recover_steps": rec.get("steps"), "recover_stopped": rec.get("stopped"),
                     "held_out_slice": rec.get("held_out_after", {}).get("top1_agreement")})
    env = {"cpu": platform.processor() or platform.machine(), "isa": flags, "usable_cores": len(os.sched_getaffinity(0)),
           "vnni": this_cpu().vnni, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "calib": args.calib,
           "budget": args.budget, "recover_options": options, "oracle": args.oracle, "load_average": os.getloadavg()}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "recover.json", json.dumps({"env": env, "rows": rows, "runs": runs,
                                                                 "latency": lat}, indent=1, default=str).encode())
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"# Recover on MobileNetV2 ({env['date']}; {env['usable_cores']} cores, ISA {', '.join(flags)}; "
             f"load average {env['load_average'][0]:.1f})", "",
             (f"**Oracle (a diagnosis, not a recipe):** calibration and recovery on {args.calib} other crops of "
              "the 6 evaluation photos themselves (`photo_arrays('eval', 300 + N)[300:]`). " if args.oracle else
              f"Calibration: {args.calib} crops of the calibration photos. ") +
             f"20% of them held out by recover for early stopping; budget {args.budget}"
             f"{', options ' + json.dumps(options) if options else ''}. Agreement with FP32: top-1 on the benchmark's 300 held-out crops "
             "(`photo_arrays('eval', 300)`) and on 100 crops of 20 photos used nowhere else (foolbox's ImageNet "
             "photos). Speed-up vs FP32 from one latency run (batch 1, median).", "",
             "Recovery steps taken (batch 8) and the step shipped (0: the held-out slice never improved, PTQ's "
             "plan ships): " + "; ".join(f"{r['variant']}: {r['recover_steps']} steps, {r['recover_stopped']}"
                                         for r in rows if r["recover_steps"] is not None) + ".", "",
             "| variant | top-1 agree (300 held-out crops) | KL | SQNR dB | top-1 agree (unused photos) | KL | "
             "size % FP32 | speed-up 1T | speed-up 2T | quantize s | of which recover s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {fmt(r['eval300_top1'], '.3f')} | {fmt(r['eval300_kl'], '.4f')} | "
                     f"{fmt(r['eval300_sqnr_db'], '.1f')} | {fmt(r['unused_top1'], '.3f')} | "
                     f"{fmt(r['unused_kl'], '.4f')} | {r['size_pct']:.1f} | {r['speedup_1t']:.2f}x | "
                     f"{r['speedup_2t']:.2f}x | {r['quantize_s']:.0f} | {fmt(r['recover_s'], '.0f')} | "
                     f"{r['peak_rss_mb']:.0f} |")
    atomic_write_bytes(args.out / "recover.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


def _input_name(fp32: Path) -> str:
    import onnx

    return onnx.load(str(fp32), load_external_data=False).graph.input[0].name


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT.parent / "src"))
    sys.exit(main())
