"""Sentence embeddings with all-MiniLM-L6-v2: FP32 vs ONNX Runtime dynamic INT8 vs lowbit INT8 vs
lowbit INT4 weights. Prints size, latency (batch 1, 1 thread, interleaved medians: every evaluation
sentence at its own length, and a 128-token input), mean / worst cosine to FP32 and
nearest-neighbour preservation on held-out sentences (the evaluation split; every choice lowbit
makes uses the calibration split only).

    bash scripts/setup_minilm.sh
    HF_HUB_OFFLINE=1 .venv/bin/python examples/sentence_embeddings/run.py [--eval 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import onnx  # noqa: E402

import lowbit  # noqa: E402
from lowbit.emit.dynamic import emit_dynamic  # noqa: E402
from lowbit.emit.int4 import emit_int4  # noqa: E402
from lowbit.load.model import load_model  # noqa: E402
from lowbit.onnx.session import session  # noqa: E402
from lowbit.load.prepare import prepare  # noqa: E402
from lowbit.transformers.metrics import cosines, nearest_neighbours  # noqa: E402
from lowbit.transformers.pipeline import plan_int4  # noqa: E402
from lowbit.transformers.text import embed, encode, packed_feeds, real_sentences, text_feeds  # noqa: E402
from lowbit.verify import measure_latency  # noqa: E402
from lowbit.demo.zoo.minilm import minilm_onnx, minilm_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", type=int, default=300, help="held-out sentences (>= 200)")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", default="/tmp/lowbit-minilm")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = minilm_tokenizer()
    prepared = prepare(load_model(str(minilm_onnx()))).proto
    cal = real_sentences("calibration", args.calib)
    ev = real_sentences("evaluation", args.eval)
    calib, packed = text_feeds(tok, cal), packed_feeds(tok, cal, 128)

    models: dict[str, bytes] = {"fp32": prepared.SerializeToString()}
    models["ort-dynamic"] = emit_dynamic(prepared)[0].SerializeToString()
    t = time.perf_counter()
    int8 = lowbit.quantize(prepared, "int8", calib, verify=None)  # the preset resolves to the transformer recipe
    models["lowbit-int8"] = int8.model.SerializeToString()
    t8 = time.perf_counter() - t
    m4, p4 = plan_int4(prepared, packed, group_size=32, rounding="gptq")  # int8 blocks: measured sensitivity
    models["lowbit-int4"] = emit_int4(m4, p4).SerializeToString()
    for k, b in models.items():
        (out / f"minilm.{k}.onnx").write_bytes(b)
    int8.plan.save(out / "int8.plan.json")

    ref = embed(session(models["fp32"], threads=1), tok, ev)
    nn_ref = nearest_neighbours(ref)
    sents = _sentence_latency(models, tok, ev, args.runs)
    feeds = {k: v[:, :128] for k, v in encode(tok, [" ".join(ev)], pad_to=128).items()}
    lat = measure_latency(models, feeds, (1,), runs=args.runs)
    f1, f128 = sents["fp32"], lat["fp32"]["1"]["median"]
    print(f"{len(ev)} held-out sentences, {len(cal)} calibration sentences; quantize time int8 {t8:.0f} s")
    print("| variant | size MB | % of FP32 | ms / sentence, 1 thread (x FP32) | 128 tokens, 1 thread (x FP32) | "
          "mean cos | worst cos | NN kept |")
    print("|---|---|---|---|---|---|---|---|")
    for k, b in models.items():
        e = ref if k == "fp32" else embed(session(b, threads=1), tok, ev)
        c = cosines(ref, e)
        l1, l128 = sents[k], lat[k]["1"]["median"]
        print(f"| {k} | {len(b) / 1e6:.1f} | {100 * len(b) / len(models['fp32']):.0f}% | {l1:.2f} ({f1 / l1:.2f}x) | "
              f"{l128:.1f} ({f128 / l128:.2f}x) | {c.mean():.4f} | {c.min():.4f} | "
              f"{(nearest_neighbours(e) == nn_ref).mean():.3f} |")


def _sentence_latency(models: dict[str, bytes], tok, texts: list[str], rounds: int) -> dict[str, float]:
    """Median over `rounds` of each model's mean time per sentence (batch 1, each at its own length),
    models interleaved sentence by sentence, 1 thread."""
    sessions = {k: session(b, threads=1) for k, b in models.items()}
    feeds = [encode(tok, [t]) for t in texts[:100]]
    for s in sessions.values():
        s.run(None, feeds[0])
    per: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(max(3, rounds // 5)):
        total = dict.fromkeys(models, 0.0)
        for f in feeds:
            for k, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, f)
                total[k] += time.perf_counter() - t0
        for k in models:
            per[k].append(1e3 * total[k] / len(feeds))
    return {k: float(sorted(v)[len(v) // 2]) for k, v in per.items()}


if __name__ == "__main__":
    main()
