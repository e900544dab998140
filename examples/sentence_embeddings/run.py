"""Sentence embeddings with all-MiniLM-L6-v2: FP32 vs ONNX Runtime dynamic INT8 vs lowbit INT8 vs
lowbit INT4 weights. Prints size, latency (batch 1, 128 tokens, 1 and 2 threads, interleaved
medians), mean / worst cosine to FP32 and nearest-neighbour preservation on held-out sentences.

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

from lowbit.emit import emit_qdq  # noqa: E402
from lowbit.emit.dynamic import emit_dynamic  # noqa: E402
from lowbit.emit.int4 import emit_int4  # noqa: E402
from lowbit.load import load_model  # noqa: E402
from lowbit.observe import session  # noqa: E402
from lowbit.prepare import prepare  # noqa: E402
from lowbit.transformers.metrics import cosines, nearest_neighbours  # noqa: E402
from lowbit.transformers.pipeline import plan_int4, plan_int8  # noqa: E402
from lowbit.transformers.text import embed, encode, packed_feeds, real_sentences, text_feeds  # noqa: E402
from lowbit.verify import measure_latency  # noqa: E402
from lowbit.zoo.minilm import minilm_onnx, minilm_tokenizer  # noqa: E402


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
    t = time.perf_counter()
    models["ort-dynamic"] = emit_dynamic(prepared)[0].SerializeToString()
    m8, p8 = plan_int8(prepared, calib, gptq_calib=packed)
    models["lowbit-int8"] = emit_qdq(m8, p8).SerializeToString()
    t8 = time.perf_counter() - t
    m4, p4 = plan_int4(prepared, packed, group_size=32, rounding="gptq", int8_layers=("role:ffn_down",))
    models["lowbit-int4"] = emit_int4(m4, p4).SerializeToString()
    for k, b in models.items():
        (out / f"minilm.{k}.onnx").write_bytes(b)
    p8.save(out / "int8.plan.json")

    ref = embed(session(models["fp32"], threads=2), tok, ev)
    nn_ref = nearest_neighbours(ref)
    feeds = {k: v[:, :128] for k, v in encode(tok, [" ".join(ev)], pad_to=128).items()}
    lat = measure_latency(models, feeds, (1, 2), runs=args.runs)
    f1, f2 = lat["fp32"]["1"]["median"], lat["fp32"]["2"]["median"]
    print(f"{len(ev)} held-out sentences, {len(cal)} calibration sentences; quantize time int8 {t8:.0f} s")
    print("| variant | size MB | % of FP32 | 1-thread ms (x FP32) | 2-thread ms (x FP32) | mean cos | worst cos | NN kept |")
    print("|---|---|---|---|---|---|---|---|")
    for k, b in models.items():
        e = ref if k == "fp32" else embed(session(b, threads=2), tok, ev)
        c = cosines(ref, e)
        l1, l2 = lat[k]["1"]["median"], lat[k]["2"]["median"]
        print(f"| {k} | {len(b) / 1e6:.1f} | {100 * len(b) / len(models['fp32']):.0f}% | {l1:.1f} ({f1 / l1:.2f}x) | "
              f"{l2:.1f} ({f2 / l2:.2f}x) | {c.mean():.4f} | {c.min():.4f} | "
              f"{(nearest_neighbours(e) == nn_ref).mean():.3f} |")


if __name__ == "__main__":
    main()
