"""One quantization in a fresh process, so that its wall time and peak memory are its own.

    python benchmarks/worker.py SPEC.json

SPEC: {"kind": "lowbit" | "peer", "name": preset (or 'int4': lowbit.transformers' block-wise INT4
       path) or peer label, "model": FP32 .onnx, "calib": .pkl (an (N, C, H, W) array or a list of
       feed dicts), "calib_fixed": .pkl of equal-shape feeds or null (then "calib"; used by the peers
       and by 'int4'), "parity_eval": .pkl (array or feeds) for lowbit's parity check,
       "peer_options": dict, "out": output .onnx, "result": where to write the result JSON}.
Result: {"ok", "wall_s", "peak_rss_mb", "rss_before_mb", "parity", "notes", "error"}.
Peak RSS is the process's VmHWM over the call (its window reset through /proc/self/clear_refs
just before, as lowbit.quantize itself does, so lowbit and the peers are measured alike): it
includes what was already resident, the interpreter, imports and calibration data, whose share is
``rss_before_mb`` (VmRSS just before the call).
"""

from __future__ import annotations

import json
import pickle
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process's own memory, in MB. Not ru_maxrss: Linux carries
    the parent's peak into a child's ru_maxrss across fork + exec, VmHWM starts afresh at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> None:
    """Start a new VmHWM window (Linux: writing 5 to clear_refs); where that is refused, the peak
    is the process's since exec, which only adds the imports' transient memory."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _measured(call: Callable[[], Any]) -> tuple[Any, dict]:
    _reset_peak()
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    out = call()
    wall = time.perf_counter() - t0
    return out, {"wall_s": wall, "peak_rss_mb": _status_mb("VmHWM"), "rss_before_mb": before}


def _load(path: str | None) -> Any:
    if not path:
        return None
    with open(path, "rb") as f:
        return pickle.load(f)


def _int4(model: str, out: str, calib: Any) -> None:
    """lowbit's block-wise INT4 path for transformers, as examples/sentence_embeddings runs it: INT4
    weights in groups of 32 with GPTQ rounding (MatMulNBits), the FFN down-projections in INT8
    blocks, the word-embedding table INT4 (GatherBlockQuantized)."""
    from lowbit.emit.int4 import emit_int4
    from lowbit.io import atomic_write_bytes
    from lowbit.load.model import load_model
    from lowbit.load.prepare import prepare
    from lowbit.transformers.pipeline import plan_int4

    m4, p4 = plan_int4(prepare(load_model(model)).proto, calib, group_size=32, rounding="gptq")
    atomic_write_bytes(out, emit_int4(m4, p4).SerializeToString())


def _lowbit(spec: dict, calib: Any, calib_fixed: Any) -> dict:
    import lowbit
    from lowbit.load.model import load_model
    from lowbit.load.prepare import prepare
    from lowbit.verify import check_parity

    if spec["name"] == "int4":
        _, out = _measured(lambda: _int4(spec["model"], spec["out"], calib_fixed))
        out.update(precision="int4", parity=None,
                   notes=["plan_int4(group_size=32, rounding='gptq'; 8-bit layers chosen by sensitivity) + emit_int4"])
        return out
    result, out = _measured(lambda: lowbit.quantize(spec["model"], lowbit.preset(spec["name"]), calib,
                                                    output=spec["out"], verify=None))
    out["precision"] = result.plan.precision
    out["parity"], out["notes"] = None, []
    if result.plan.precision == "int8" and result.float_model is not None:
        # what quantize(verify=...) reports as report.variants[1]["parity"], computed after the
        # measurement so that verification does not count in the quantize call's time and memory
        evaluation = _load(spec["parity_eval"])
        n = len(evaluation)
        specs = prepare(load_model(spec["model"]), optimize=False).inputs
        try:
            out["parity"] = check_parity(result.model.SerializeToString(), result.float_model, result.plan,
                                         lowbit.as_feeds(evaluation, specs), n)
            out["notes"].append(f"parity on the first {n} evaluation samples")
        except Exception as e:  # the model is still measured; the parity check's failure is noted
            out["notes"].append(f"parity check failed: {type(e).__name__}: {str(e)[:300]}")
    return out


def _peer(spec: dict, calib: Any) -> dict:
    from peers import run_peer

    info, out = _measured(lambda: run_peer(spec["name"], Path(spec["model"]), Path(spec["out"]), calib,
                                           spec.get("peer_options")))
    out.update(parity=None, notes=info.get("notes", []))
    return out


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        calib, fixed = _load(spec["calib"]), _load(spec.get("calib_fixed"))
        fixed = calib if fixed is None else fixed  # equal-shape feeds where the model has them
        out = _lowbit(spec, calib, fixed) if spec["kind"] == "lowbit" else _peer(spec, fixed)
        out.update(ok=True, error=None)
    except Exception as e:  # reported in the results, the benchmark goes on with the other variants
        out = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}",
               "traceback": traceback.format_exc()[-3000:]}
    Path(spec["result"]).write_text(json.dumps(out, default=str))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
