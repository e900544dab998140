"""lowbit's benchmark: FP32 vs every lowbit preset (and, with --peers, ONNX Runtime and NNCF)
on MobileNetV2 (real ImageNet weights), a ResNet-18-shaped network (seeded random weights),
all-MiniLM-L6-v2 sentence embeddings (real weights) and the doorbell's face descriptor (dlib's
ResNet, real weights). What is model-specific (data, variants, fidelity metrics) is in suites.py.

    .venv/bin/python benchmarks/run.py [--quick] [--peers]
                                       [--models mobilenet_v2,resnet18,minilm,face_descriptor]
                                       [--threads 1,2] [--runs N] [--calib N] [--eval N] [--out DIR]

Writes DIR/results.md and DIR/results.json (default DIR: benchmarks/results) and prints the tables.
Every quantization runs in its own subprocess (benchmarks/worker.py) for honest time / peak RSS;
every variant of one model is timed interleaved in this process (lowbit.verify.measure_latency).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lowbit  # noqa: E402
from lowbit.errors import LowbitError  # noqa: E402
from lowbit.io import atomic_write_text  # noqa: E402
from lowbit.verify import measure_latency, speedup_interval  # noqa: E402
from lowbit.verify.fusion import executed_graph  # noqa: E402

import peers  # noqa: E402
from render import SCHEMA, check_bars, render_markdown  # noqa: E402
from suites import SUITES, Suite  # noqa: E402

MODELS = tuple(SUITES)
WORKER_TIMEOUT_S = 1800


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 16 calib, 32 eval, 5 runs, fast presets, MobileNetV2 unless --models")
    p.add_argument("--peers", action="store_true", help="also ONNX Runtime quantize_static/_dynamic and NNCF")
    p.add_argument("--models", default=None, help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--threads", default="1,2", help="ONNX Runtime intra-op thread counts to time")
    p.add_argument("--runs", type=int, default=None, help="timed runs per variant and thread count (default 100)")
    p.add_argument("--calib", type=int, default=None,
                   help="calibration photo crops / sentences (default 128; the face set is fixed)")
    p.add_argument("--eval", type=int, default=None,
                   help="evaluation photo crops / sentences (default 300; the face set is fixed)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder for results.md / results.json")
    a = p.parse_args(argv)
    a.models = tuple(m for m in (a.models or ("mobilenet_v2" if a.quick else ",".join(MODELS))).split(",") if m)
    unknown = [m for m in a.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {MODELS}")
    a.threads = tuple(int(t) for t in a.threads.split(",") if t)
    a.runs = a.runs or (5 if a.quick else 100)
    a.calib = a.calib or (16 if a.quick else 128)
    a.eval = a.eval or (32 if a.quick else 300)
    a.parity_n = 8 if a.quick else 32
    return a


def machine_info() -> dict:
    import onnxruntime

    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and cpu == "unknown":
                cpu = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    versions = dict(lowbit.Report().data["versions"])
    try:
        import nncf

        versions["nncf"] = nncf.__version__
    except ImportError:
        versions["nncf"] = None
    return {"cpu": cpu, "lowbit_source": _git_state(), "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags],
            "onnxruntime": onnxruntime.__version__, "versions": versions, "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _git_state() -> str:
    """Commit of the lowbit source being measured, '+dirty' when src/ has uncommitted edits."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=HERE.parent, capture_output=True, text=True, timeout=30).stdout
    try:
        commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
        return commit + ("+dirty" if git("status", "--porcelain", "--", "src").strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def variant_specs(suite: Suite, with_peers: bool,
                  quick: bool = False) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """[(label, kind, name)] for the worker, and {label: why skipped}."""
    specs = [(f"lowbit:{p}", "lowbit", p) for p in suite.presets(quick)]
    skipped: dict[str, str] = {}
    if with_peers:
        for label in suite.peer_labels:
            why = peers.unavailable(label)
            if why:
                skipped[label] = why
            else:
                specs.append((label, "peer", label))
    return specs, skipped


def _pickle(path: Path, obj: object) -> str | None:
    if obj is None:
        return None
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    return str(path)


def run_worker(label: str, kind: str, name: str, model: Path, work: Path, files: dict, peer_options: dict) -> dict:
    safe = label.replace(":", "_")
    spec = {"kind": kind, "name": name, "model": str(model), **files, "peer_options": peer_options,
            "out": str(work / f"{safe}.onnx"), "result": str(work / f"{safe}.result.json")}
    spec_path = work / f"{safe}.spec.json"
    spec_path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    try:
        # cwd: the temp folder, because ORT's quant_pre_process leaves sym_shape_infer_temp.onnx and a 90 MB
        # external-data file in the working directory when its shape inference fails (it does on MiniLM)
        proc = subprocess.run([sys.executable, str(HERE / "worker.py"), str(spec_path)], capture_output=True,
                              text=True, timeout=WORKER_TIMEOUT_S, cwd=work)
    except subprocess.TimeoutExpired:
        log(f"  {label}: FAILED, timed out after {WORKER_TIMEOUT_S} s")
        return {"ok": False, "error": f"timed out after {WORKER_TIMEOUT_S} s"}
    result_path = Path(spec["result"])
    if not result_path.exists():  # killed (out of memory, a crash in native code): a result, not a crash here
        err = f"worker died (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        log(f"  {label}: FAILED {err[:200]}")
        return {"ok": False, "error": err}
    out = json.loads(result_path.read_text())
    out["path"] = spec["out"]
    log(f"  {label}: {'ok' if out['ok'] else 'FAILED ' + out['error']} in {time.perf_counter() - t0:.1f} s")
    return out


def _input_names(model: bytes) -> list[str]:
    import onnx

    m = onnx.load_from_string(model)
    inits = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits]


# rounds in this many groups, each with new sessions: a session's thread placement moves its time
# for its whole life (lowbit's int8 and int8-fast ResNet-18, one kernel graph: 13.07 vs 12.18 ms at 2T)
LATENCY_BLOCKS = 4


def kernel_counts(model: bytes) -> dict[str, int]:
    """How many nodes of each op type ONNX Runtime runs after its own graph optimizations: two
    variants with equal counts run the same kernels, so their latency can differ only by noise."""
    return dict(sorted(Counter(n.op_type for n in executed_graph(model).graph.node).items()))


def bench_model(name: str, args: argparse.Namespace, work: Path) -> dict:
    suite = SUITES[name]
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32.onnx"
    suite.export(fp32)
    log(f"{name}: FP32 ONNX ({fp32.stat().st_size / 1e6:.2f} MB); loading data")
    data = suite.data(args)
    files = {"calib": _pickle(work / "calib.pkl", data["calib"]),
             "calib_fixed": _pickle(work / "calib_fixed.pkl", data.get("calib_fixed")),
             "parity_eval": _pickle(work / "parity_eval.pkl", data["parity_eval"])}
    specs, skipped = variant_specs(suite, args.peers, args.quick)
    quant = {label: run_worker(label, kind, nm, fp32, work, files, suite.peer_options) for label, kind, nm in specs}
    models = {k: Path(q["path"]).read_bytes() for k, q in quant.items() if q["ok"]}
    log(f"{name}: fidelity of {len(models)} variants")
    fid, fp32_fid, run_errors = suite.fidelity(fp32, models, data)
    ref = fp32.read_bytes()
    ref_inputs = _input_names(ref)
    timed = {"fp32": ref}
    for k, v in models.items():
        if k not in fid:
            continue
        if sorted(_input_names(v)) != sorted(ref_inputs):  # measure_latency feeds every model the same inputs
            run_errors[k] = f"inputs {_input_names(v)} differ from FP32's {ref_inputs}: not timed"
            continue
        timed[k] = v
    feeds = data["latency_feeds"](ref_inputs[0])
    log(f"{name}: latency, {len(timed)} variants interleaved, threads {args.threads}, {args.runs} runs, "
        f"inputs {', '.join(f'{k} {tuple(v.shape)}' for k, v in feeds.items())}")
    load_before = os.getloadavg()[0]
    lat = measure_latency(timed, feeds, args.threads, args.runs, keep_samples=True, blocks=LATENCY_BLOCKS)
    load = [load_before, os.getloadavg()[0]]
    fp32_size = len(ref)
    kernels = {k: kernel_counts(m) for k, m in timed.items()}
    variants: dict[str, dict] = {"fp32": {"kind": "fp32", "size_bytes": fp32_size, "latency_ms": lat["fp32"],
                                          "kernels": kernels["fp32"], "fidelity": fp32_fid, "quantize": None}}
    for label, kind, nm in specs:
        q = quant[label]
        v: dict = {"kind": kind, "name": nm, "error": q.get("error") or run_errors.get(label)}
        if q["ok"]:
            v["size_bytes"] = len(models[label])
            v["quantize"] = {k: q[k] for k in ("wall_s", "peak_rss_mb", "rss_before_mb")}
            v["parity"], v["notes"] = q.get("parity"), q.get("notes", [])
        if label in fid:
            v["fidelity"] = fid[label]
        if label in lat:
            v["latency_ms"] = lat[label]
            v["kernels"] = kernels[label]
        variants[label] = v
    for v in variants.values():
        if "size_bytes" in v:
            v["size_mb"] = v["size_bytes"] / 1e6
            v["size_pct_fp32"] = 100.0 * v["size_bytes"] / fp32_size
        if "latency_ms" in v:
            v["speedup"] = {t: lat["fp32"][t]["median"] / m["median"] for t, m in v["latency_ms"].items()}
            v["speedup_ci95"] = {t: list(speedup_interval(lat["fp32"][t]["samples"], m["samples"],
                                                          blocks=m["blocks"])[1:])
                                 for t, m in v["latency_ms"].items()}
    for label, why in skipped.items():
        variants[label] = {"kind": "peer", "name": label, "error": f"skipped: {why}"}
    return {**suite.info(), "data": data["describe"], "samples": data["counts"],
            "latency_input": {k: list(v.shape) for k, v in feeds.items()},
            "load_avg_1min_during_latency": load, "variants": variants}


def _finite(x: object) -> object:
    """JSON has no inf/nan: non-finite numbers (SQNR of an exact copy) become null."""
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def update_readme(markdown: str) -> None:
    """Put the latest full results between the benchmark markers of benchmarks/README.md."""
    readme = HERE / "README.md"
    start, end = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
    text = readme.read_text()
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        body = markdown.replace("\n# ", "\n### ").replace("\n## ", "\n#### ")
        atomic_write_text(readme, f"{head}{start}\n{body.strip()}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    results = {"schema": SCHEMA, "command": " ".join(["benchmarks/run.py", *(argv or sys.argv[1:])]),
               "machine": machine_info(),
               "settings": {"quick": args.quick, "peers": args.peers, "models": list(args.models),
                            "threads": list(args.threads), "latency_runs": args.runs, "batch": 1,
                            "calib_samples": args.calib, "eval_samples": args.eval,
                            "parity_samples": args.parity_n, "presets": list(lowbit.PRESETS)},
               "models": {}}
    with tempfile.TemporaryDirectory(prefix="lowbit-bench-") as tmp:
        for name in args.models:
            try:
                results["models"][name] = bench_model(name, args, Path(tmp) / name)
            except LowbitError as e:  # its data or weights are not installed: say so, go on with the others
                log(f"{name}: NOT RUN: {e}")
                results["models"][name] = {**SUITES[name].info(), "error": str(e), "variants": {}}
    results["bars"] = check_bars(results["models"])
    results["elapsed_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(results)
    text = json.dumps(_finite(results), indent=1, default=str, allow_nan=False)
    atomic_write_text(args.out / "results.json", text + "\n")
    atomic_write_text(args.out / "results.md", markdown)
    if args.out.resolve() == (HERE / "results").resolve() and not args.quick:
        update_readme(markdown)
    print(markdown)
    log(f"wrote {args.out / 'results.md'} and results.json in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
