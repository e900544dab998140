"""Precision search on all-MiniLM-L6-v2 through the public API: the smallest mix (FP32 / FP16 /
INT8 / 4-bit blocks, block-quantized embedding table) whose hidden-state cosine to FP32 stays
>= 0.99, searched on calibration-split sentences, then measured on the evaluation split.

    HF_HUB_OFFLINE=1 .venv/bin/python examples/sentence_embeddings/search.py [--objective size]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lowbit  # noqa: E402
from lowbit.presets import preset  # noqa: E402
from lowbit.onnx.session import session  # noqa: E402
from lowbit.transformers.metrics import cosines, nearest_neighbours  # noqa: E402
from lowbit.transformers.text import embed, packed_feeds, real_sentences, text_feeds  # noqa: E402
from lowbit.demo.zoo.minilm import minilm_onnx, minilm_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objective", default="latency", choices=("latency", "size"))
    ap.add_argument("--out", default="/tmp/lowbit-minilm/minilm.search.onnx")
    args = ap.parse_args()
    tok = minilm_tokenizer()
    cal = real_sentences("calibration", 356)
    # the search's held-out data: calibration-split sentences not used for calibration, 128-token windows
    r = lowbit.quantize(str(minilm_onnx()), preset("int8-transformer").with_(objective=args.objective),
                        text_feeds(tok, cal[:128]), eval_data=packed_feeds(tok, cal[128:], 128),
                        max_drop=0.01, metric="cosine", verify=None, output=args.out)
    s = r.report.data["search"]
    size = os.path.getsize(args.out)
    ev = real_sentences("evaluation", 300)
    ref = embed(session(minilm_onnx().read_bytes(), threads=1), tok, ev)
    e = embed(session(r.model.SerializeToString(), threads=1), tok, ev)
    c = cosines(ref, e)
    picks = {}
    for v in s["chosen"]["promoted"].values():
        picks[v] = picks.get(v, 0) + 1
    print(f"budget met: {s['met_budget']}; hidden-state cosine {s['chosen']['metric']:.4f} (search half), "
          f"{s['holdout']['metric']:.4f} (confirm half); {s['evaluations']} evaluations; non-INT8 layers: {picks}")
    print(f"size {size / 1e6:.1f} MB = {100 * size / os.path.getsize(str(minilm_onnx())):.1f}% of FP32; "
          f"evaluation split: mean cos {c.mean():.4f}, worst {c.min():.4f}, "
          f"NN kept {(nearest_neighbours(e) == nearest_neighbours(ref)).mean():.3f}")


if __name__ == "__main__":
    main()
