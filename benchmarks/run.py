"""lowbit's benchmark: FP32 vs every lowbit preset (and, with --peers, ONNX Runtime and NNCF)
on MobileNetV2 (real ImageNet weights) and a ResNet-18-shaped network (seeded random weights).

    .venv/bin/python benchmarks/run.py [--quick] [--peers] [--models mobilenet_v2,resnet18]
                                       [--threads 1,2] [--runs N] [--out DIR]

Writes DIR/results.md and DIR/results.json (default DIR: benchmarks/results) and prints the tables.
Every quantization runs in its own subprocess (benchmarks/worker.py) for honest time / peak RSS;
every variant of one model is timed interleaved in this process (lowbit.verify.measure_latency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lowbit  # noqa: E402
from lowbit.data import as_feeds  # noqa: E402
from lowbit.errors import LowbitError  # noqa: E402
from lowbit.io import atomic_write_bytes, atomic_write_text  # noqa: E402
from lowbit.load import export_torch, load_model  # noqa: E402
from lowbit.prepare import prepare  # noqa: E402
from lowbit.verify import compare_models, measure_latency  # noqa: E402

import peers  # noqa: E402
from render import SCHEMA, check_bars, render_markdown  # noqa: E402

MODELS = ("mobilenet_v2", "resnet18")
EVAL_BATCH = 10
WORKER_TIMEOUT_S = 1800


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 16 calib, 32 eval, 5 runs, MobileNetV2 only")
    p.add_argument("--peers", action="store_true", help="also ONNX Runtime quantize_static/_dynamic and NNCF")
    p.add_argument("--models", default=None, help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--threads", default="1,2", help="ONNX Runtime intra-op thread counts to time")
    p.add_argument("--runs", type=int, default=None, help="timed runs per variant and thread count (default 100)")
    p.add_argument("--calib", type=int, default=None, help="calibration crops (default 128)")
    p.add_argument("--eval", type=int, default=None, help="evaluation crops (default 300)")
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


def export_model(name: str, path: Path) -> dict:
    """Write the FP32 ONNX model; return what the table must say about its weights."""
    if name == "mobilenet_v2":
        from lowbit.demo.mobilenet import export_mobilenet

        export_mobilenet(path)
        return {"title": "MobileNetV2", "weights": "real ImageNet weights (torchvision IMAGENET1K_V1)",
                "random_weights": False}
    import torch

    from lowbit.zoo import resnet18

    atomic_write_bytes(path, export_torch(resnet18(seed=0), torch.zeros(1, 3, 224, 224)).SerializeToString())
    return {"title": "ResNet-18 (shape only)", "weights": "seeded random weights (seed 0)", "random_weights": True}


def variant_specs(with_peers: bool, quick: bool = False) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """[(label, kind, name)] for the worker, and {label: why skipped}."""
    # CNN benchmarks: every preset but the transformer one (which places Q/DQ for attention blocks);
    # the quick smoke run keeps to the fast presets
    presets = [p for p in lowbit.PRESETS if p != "int8-transformer"]
    if quick:
        presets = [p for p in presets if p in ("fp16", "int8", "int8-fast")]
    specs = [(f"lowbit:{p}", "lowbit", p) for p in presets]
    skipped: dict[str, str] = {}
    if with_peers:
        for label in peers.PEERS:
            why = peers.unavailable(label)
            if why:
                skipped[label] = why
            else:
                specs.append((label, "peer", label))
    return specs, skipped


def run_worker(label: str, kind: str, name: str, model: Path, work: Path, parity_n: int) -> dict:
    safe = label.replace(":", "_")
    spec = {"kind": kind, "name": name, "model": str(model), "calib": str(work / "calib.npy"),
            "eval": str(work / "eval.npy"), "parity_n": parity_n, "out": str(work / f"{safe}.onnx"),
            "result": str(work / f"{safe}.result.json")}
    spec_path = work / f"{safe}.spec.json"
    spec_path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(HERE / "worker.py"), str(spec_path)], capture_output=True,
                              text=True, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {WORKER_TIMEOUT_S} s"}
    result_path = Path(spec["result"])
    if not result_path.exists():
        return {"ok": False, "error": f"worker died (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"}
    out = json.loads(result_path.read_text())
    out["path"] = spec["out"]
    log(f"  {label}: {'ok' if out['ok'] else 'FAILED ' + out['error']} in {time.perf_counter() - t0:.1f} s")
    return out


def _compare(ref: bytes, cands: dict[str, bytes], data) -> tuple[dict, dict[str, str]]:
    """compare_models, isolating a candidate that ONNX Runtime cannot run."""
    try:
        return compare_models(ref, cands, data)[0], {}
    except (LowbitError, RuntimeError) as e:
        if len(cands) == 1:
            return {}, {k: str(e)[:300] for k in cands}
        accs, errors = {}, {}
        for k, v in cands.items():
            a, err = _compare(ref, {k: v}, data)
            accs.update(a)
            errors.update(err)
        return accs, errors


def fidelity(fp32: Path, models: dict[str, bytes], evaluation: np.ndarray, labeled: tuple[np.ndarray, np.ndarray]
             ) -> tuple[dict[str, dict], float | None, dict[str, str]]:
    """({label: fidelity + labeled top-1}, FP32 labeled top-1, {label: error})."""
    specs = prepare(load_model(str(fp32)), optimize=False).inputs
    ref = fp32.read_bytes()
    accs, errors = _compare(ref, models, as_feeds(evaluation, specs, batch_size=EVAL_BATCH))
    if errors:  # a model with a fixed batch dimension: retry those one sample at a time
        retry, errors = _compare(ref, {k: models[k] for k in errors}, as_feeds(evaluation, specs))
        accs.update(retry)
    ok = {k: v for k, v in models.items() if k in accs}
    lab, lab_errors = _compare(ref, ok, as_feeds(labeled[0], specs, labels=labeled[1]))
    out, ref_top1 = {}, None
    for k in ok:
        out[k] = dict(accs[k].result())
        if k in lab:
            ref_acc, acc = lab[k].accuracy()
            ref_top1, out[k]["labeled_top1"] = ref_acc["top1"], acc["top1"]
    return out, ref_top1, {**errors, **lab_errors}


def bench_model(name: str, args: argparse.Namespace, data: dict, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32.onnx"
    info = export_model(name, fp32)
    log(f"{name}: exported FP32 ({fp32.stat().st_size / 1e6:.2f} MB)")
    np.save(work / "calib.npy", data["calib"])
    np.save(work / "eval.npy", data["eval"])
    specs, skipped = variant_specs(args.peers, args.quick)
    quant = {label: run_worker(label, kind, nm, fp32, work, args.parity_n) for label, kind, nm in specs}
    models = {k: Path(q["path"]).read_bytes() for k, q in quant.items() if q["ok"]}
    log(f"{name}: fidelity on {len(data['eval'])} eval crops and {len(data['labels'])} labeled photos")
    fid, ref_top1, run_errors = fidelity(fp32, models, data["eval"], (data["labeled"], data["labels"]))
    timed = {"fp32": fp32.read_bytes(), **{k: v for k, v in models.items() if k in fid}}
    log(f"{name}: latency, {len(timed)} variants interleaved, threads {args.threads}, {args.runs} runs")
    load_before = os.getloadavg()[0]
    lat = measure_latency(timed, {peers.input_name(fp32): data["eval"][:1]}, args.threads, args.runs)
    load = [load_before, os.getloadavg()[0]]
    fp32_size = len(timed["fp32"])
    variants: dict[str, dict] = {"fp32": {"kind": "fp32", "size_bytes": fp32_size, "labeled_top1": ref_top1,
                                          "latency_ms": lat["fp32"], "fidelity": None, "quantize": None}}
    for label, kind, nm in specs:
        q = quant[label]
        v: dict = {"kind": kind, "name": nm, "error": q.get("error") or run_errors.get(label)}
        if q["ok"]:
            v["size_bytes"] = len(models[label])
            v["quantize"] = {k: q[k] for k in ("wall_s", "peak_rss_mb", "rss_before_mb")}
            v["parity"], v["notes"] = q.get("parity"), q.get("notes", [])
        if label in fid:
            v["fidelity"] = {k: fid[label].get(k) for k in ("samples", "top1_agreement", "sqnr_db", "kl", "cosine")}
            v["labeled_top1"] = fid[label].get("labeled_top1")
            v["latency_ms"] = lat[label]
        variants[label] = v
    for v in variants.values():
        if "size_bytes" in v:
            v["size_mb"] = v["size_bytes"] / 1e6
            v["size_pct_fp32"] = 100.0 * v["size_bytes"] / fp32_size
        if "latency_ms" in v:
            v["speedup"] = {t: lat["fp32"][t]["median"] / m["median"] for t, m in v["latency_ms"].items()}
    for label, why in skipped.items():
        variants[label] = {"kind": "peer", "name": label, "error": f"skipped: {why}"}
    return {**info, "load_avg_1min_during_latency": load, "variants": variants}


def _finite(x: object) -> object:
    """JSON has no inf/nan: non-finite numbers (SQNR of an exact copy) become null."""
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def load_data(args: argparse.Namespace) -> dict:
    from lowbit.demo.mobilenet import labeled_arrays, photo_arrays

    log(f"data: {args.calib} calib crops, {args.eval} eval crops, 20 labeled photos")
    labeled_x, labels = labeled_arrays()
    return {"calib": np.stack(photo_arrays("calib", args.calib)), "eval": np.stack(photo_arrays("eval", args.eval)),
            "labeled": np.stack(labeled_x), "labels": labels}


def update_readme(markdown: str) -> None:
    """Put the latest full results between the README's benchmark markers."""
    readme = HERE.parent / "README.md"
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
    data = load_data(args)
    results = {"schema": SCHEMA, "command": " ".join(["benchmarks/run.py", *(argv or sys.argv[1:])]),
               "machine": machine_info(),
               "settings": {"quick": args.quick, "peers": args.peers, "models": list(args.models),
                            "threads": list(args.threads), "latency_runs": args.runs, "batch": 1,
                            "calib_samples": len(data["calib"]), "eval_samples": len(data["eval"]),
                            "labeled_samples": len(data["labels"]), "parity_samples": args.parity_n,
                            "presets": list(lowbit.PRESETS)},
               "models": {}}
    with tempfile.TemporaryDirectory(prefix="lowbit-bench-") as tmp:
        for name in args.models:
            results["models"][name] = bench_model(name, args, data, Path(tmp) / name)
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
