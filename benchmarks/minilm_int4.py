"""The int4 preset on all-MiniLM-L6-v2 (real weights, real sentences): size, latency and fidelity of
`lowbit.quantize(model, "int4")` at MatMulNBits accuracy levels 0 (float compute) and 4 (int8
compute), next to FP32 and the sensitivity-chosen 4/8-bit mix of `transformers.pipeline.plan_int4`
(what examples/sentence_embeddings and the benchmark suite run). Calibration: the calibration split
packed into 128-token sequences (GPTQ needs equal lengths); evaluation: the held-out split.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/minilm_int4.py [--eval 300] [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

import lowbit  # noqa: E402
from lowbit.presets import preset  # noqa: E402
from lowbit.emit.int4 import emit_int4  # noqa: E402
from lowbit.load.model import load_model  # noqa: E402
from lowbit.onnx.session import session  # noqa: E402
from lowbit.load.prepare import prepare  # noqa: E402
from lowbit.transformers.metrics import cosines, nearest_neighbours  # noqa: E402
from lowbit.transformers.pipeline import plan_int4  # noqa: E402
from lowbit.transformers.text import embed, encode, packed_feeds, real_sentences  # noqa: E402
from lowbit.verify import measure_latency  # noqa: E402
from lowbit.demo.zoo.minilm import minilm_onnx, minilm_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", type=int, default=300)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    tok = minilm_tokenizer()
    prepared = prepare(load_model(str(minilm_onnx()))).proto
    cal, ev = real_sentences("calibration", args.calib), real_sentences("evaluation", args.eval)
    packed = packed_feeds(tok, cal, 128)
    models: dict[str, bytes] = {"fp32": prepared.SerializeToString()}
    seconds: dict[str, float] = {}
    for level in (0, 4):
        t = time.perf_counter()
        r = lowbit.quantize(prepared, preset("int4").with_(accuracy_level=level), packed, verify=None)
        seconds[f"int4 level {level}"] = time.perf_counter() - t
        models[f"int4 level {level}"] = r.model.SerializeToString()
    t = time.perf_counter()
    m4, p4 = plan_int4(prepared, packed, group_size=32, rounding="gptq")
    models["plan_int4 mix"] = emit_int4(m4, p4).SerializeToString()
    seconds["plan_int4 mix"] = time.perf_counter() - t
    ref = embed(session(models["fp32"], threads=1), tok, ev)
    nn_ref = nearest_neighbours(ref)
    feeds = {k: np.ascontiguousarray(v[:, :128]) for k, v in encode(tok, [" ".join(ev)]).items()}
    lat = measure_latency(models, feeds, (1,), runs=args.runs)
    base = lat["fp32"]["1"]["median"]
    print(f"{len(ev)} held-out sentences; {len(cal)} calibration sentences packed into {len(packed)} x 128 tokens")
    print("| variant | size MB | % of FP32 | 128 tokens, 1 thread ms (x FP32) | mean cos | worst cos | NN kept | "
          "quantize s |")
    print("|---|---|---|---|---|---|---|---|")
    for k, b in models.items():
        e = ref if k == "fp32" else embed(session(b, threads=1), tok, ev)
        c = cosines(ref, e)
        ms = lat[k]["1"]["median"]
        print(f"| {k} | {len(b) / 1e6:.1f} | {100 * len(b) / len(models['fp32']):.1f}% | {ms:.1f} ({base / ms:.2f}x) | "
              f"{c.mean():.4f} | {c.min():.4f} | {(nearest_neighbours(e) == nn_ref).mean():.3f} | "
              f"{seconds.get(k, 0):.0f} |")


if __name__ == "__main__":
    main()
