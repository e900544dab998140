"""One quantization in a fresh process, so that its wall time and peak memory are its own.

    python benchmarks/worker.py SPEC.json

SPEC: {"kind": "lowbit" | "peer", "name": preset or peer label, "model": FP32 .onnx,
       "calib": .npy (N, C, H, W), "eval": .npy, "parity_n": int, "out": output .onnx,
       "result": where to write the result JSON}.
Result: {"ok", "wall_s", "peak_rss_mb", "rss_before_mb", "parity", "notes", "error"}.
Peak RSS is the process's ``ru_maxrss``: it includes the interpreter and imports, whose share
is ``rss_before_mb`` (measured just before the call, with the calibration data loaded).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _lowbit(spec: dict, calib: np.ndarray) -> dict:
    import lowbit

    n = int(spec["parity_n"])
    evaluation = np.load(spec["eval"], mmap_mode="r")[:n]  # memory-mapped: not resident before the call
    before = _rss_now_mb()
    result = lowbit.quantize(spec["model"], lowbit.preset(spec["name"]), calib, output=spec["out"],
                             eval_data=evaluation,
                             verify=lowbit.VerifyOptions(threads=(), parity_batches=n, eval_limit=n))
    quantizer = result.report.data["quantizer"]  # measured before verification began
    variants = result.report.variants
    parity = variants[1].get("parity") if len(variants) > 1 else None
    return {"wall_s": quantizer["wall_s"], "peak_rss_mb": quantizer["peak_rss_mb"], "rss_before_mb": before,
            "parity": parity, "precision": result.plan.precision,
            "notes": [f"parity on the first {n} eval crops"] if parity else []}


def _peer(spec: dict, calib: np.ndarray) -> dict:
    from peers import run_peer

    before = _rss_now_mb()
    t0 = time.perf_counter()
    info = run_peer(spec["name"], Path(spec["model"]), Path(spec["out"]), calib)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_rss_mb": _peak_rss_mb(), "rss_before_mb": before, "parity": None,
            "notes": info.get("notes", [])}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        calib = np.load(spec["calib"])
        out = _lowbit(spec, calib) if spec["kind"] == "lowbit" else _peer(spec, calib)
        out.update(ok=True, error=None)
    except Exception as e:  # reported in the results, the benchmark goes on with the other variants
        out = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}",
               "traceback": traceback.format_exc()[-3000:]}
    Path(spec["result"]).write_text(json.dumps(out, default=str))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
