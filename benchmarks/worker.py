"""One quantization in a fresh process, so that its wall time and peak memory are its own.

    python benchmarks/worker.py SPEC.json

SPEC: {"kind": "lowbit" | "peer", "name": preset or peer label, "model": FP32 .onnx,
       "calib": .npy (N, C, H, W), "eval": .npy, "parity_n": int, "out": output .onnx,
       "result": where to write the result JSON}.
Result: {"ok", "wall_s", "peak_rss_mb", "rss_before_mb", "parity", "notes", "error"}.
Peak RSS is the process's VmHWM: it includes the interpreter and imports, whose share is
``rss_before_mb`` (VmRSS just before the call, with the calibration data loaded).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process's own memory, in MB. Not ru_maxrss: Linux carries
    the parent's peak into a child's ru_maxrss across fork + exec, VmHWM starts afresh at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _measured(call: Callable[[], Any]) -> tuple[Any, dict]:
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    out = call()
    wall = time.perf_counter() - t0
    return out, {"wall_s": wall, "peak_rss_mb": _status_mb("VmHWM"), "rss_before_mb": before}


def _lowbit(spec: dict, calib: np.ndarray) -> dict:
    import lowbit
    from lowbit.load import load_model
    from lowbit.prepare import prepare
    from lowbit.verify import check_parity

    result, out = _measured(lambda: lowbit.quantize(spec["model"], lowbit.preset(spec["name"]), calib,
                                                    output=spec["out"], verify=None))
    out["precision"] = result.plan.precision
    out["parity"], out["notes"] = None, []
    if result.plan.precision == "int8" and result.float_model is not None:
        # what quantize(verify=...) reports as report.variants[1]["parity"], computed after the
        # measurement so that verification does not count in the quantize call's time and memory
        n = int(spec["parity_n"])
        evaluation = np.load(spec["eval"], mmap_mode="r")[:n]
        specs = prepare(load_model(spec["model"]), optimize=False).inputs
        out["parity"] = check_parity(result.model.SerializeToString(), result.float_model, result.plan,
                                     lowbit.as_feeds(evaluation, specs), n)
        out["notes"].append(f"parity on the first {n} eval crops")
    return out


def _peer(spec: dict, calib: np.ndarray) -> dict:
    from peers import run_peer

    info, out = _measured(lambda: run_peer(spec["name"], Path(spec["model"]), Path(spec["out"]), calib))
    out.update(parity=None, notes=info.get("notes", []))
    return out


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
