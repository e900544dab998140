"""Byte-identity check: quantize the benchmark models with lowbit's presets and print a SHA-256 of
each plan JSON and each output model, so that a refactoring can show it changed no output.

    .venv/bin/python benchmarks/identity.py [--models mobilenet_v2,resnet18,minilm,face_descriptor]
        [--presets int8,fp16,w4a8] [--calib 32] [--cache DIR] [--out hashes.json] [--expect hashes.json]

Same data as `benchmarks/run.py` (the suites' calibration data, `--calib` crops / sentences). The
int8 preset's latency choices read measured layer timings: they are kept in their own cache folder
(`--cache`, default `.cache/identity`) so that a later run makes the same choices
from the same timings; the first run measures and fills it. With `--expect` the run exits 1 when any
hash differs from the file's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODELS = ("mobilenet_v2", "resnet18", "minilm", "face_descriptor")
PRESETS = ("int8", "fp16", "w4a8")
SKIP = {("minilm", "w4a8")}  # w4a8 is a CNN preset (per-channel Conv/Gemm weights)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--calib", type=int, default=32, help="calibration crops / sentences (the face set is fixed)")
    p.add_argument("--cache", type=Path, default=HERE.parent / ".cache" / "identity")
    p.add_argument("--out", type=Path, default=None, help="write the hashes as JSON")
    p.add_argument("--expect", type=Path, default=None, help="compare with a JSON written by --out")
    a = p.parse_args(argv)
    a.cache.mkdir(parents=True, exist_ok=True)
    os.environ["LOWBIT_CACHE"] = str(a.cache)  # before lowbit reads it (layer costs; MiniLM's export)

    import lowbit
    from suites import SUITES

    hashes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            suite = SUITES[name]
            fp32 = Path(tmp) / f"{name}.onnx"
            suite.export(fp32)
            hashes[f"{name}/fp32"] = sha(fp32.read_bytes())
            data = suite.data(argparse.Namespace(calib=a.calib, eval=8, parity_n=4))
            for preset in a.presets.split(","):
                if (name, preset) in SKIP:
                    continue
                t = time.perf_counter()
                r = lowbit.quantize(str(fp32), preset, data["calib"], verify=None)
                hashes[f"{name}/{preset}/plan"] = sha(r.plan.to_json().encode())
                hashes[f"{name}/{preset}/model"] = sha(r.model.SerializeToString())
                print(f"{name:16s} {preset:6s} plan {hashes[f'{name}/{preset}/plan'][:16]} "
                      f"model {hashes[f'{name}/{preset}/model'][:16]}  ({time.perf_counter() - t:.0f} s)", flush=True)
    if a.out:
        a.out.write_text(json.dumps(hashes, indent=1) + "\n")
    if a.expect:
        want = json.loads(a.expect.read_text())
        diff = [k for k in hashes if k in want and want[k] != hashes[k]]
        missing = [k for k in hashes if k not in want]
        for k in diff:
            print(f"DIFFERS: {k}")
        print(f"{len(hashes) - len(diff) - len(missing)} identical, {len(diff)} differ, {len(missing)} not in "
              f"{a.expect}")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
