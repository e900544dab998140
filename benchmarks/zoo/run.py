"""Run every lowbit preset and ONNX Runtime's quantizers on every zoo model; measure what comes out.

    python -m benchmarks.zoo.run [--models a,b] [--configs int8,ort-static] [--timeout 600]

Each quantization runs the real CLI (`lowbit quantize ... --no-verify`) or ORT's quantizer in a
child process with a timeout; the harness then measures, with onnxruntime only: output size vs
FP32, 1-thread latency speed-up (interleaved rounds, medians, no spinning, with a 95% bootstrap
interval: lowbit.verify.latency) and the task metric of the quantized model against FP32 on the
evaluation data; from each lowbit run's report, the seconds per stage. Each record names the
machine (CPU, ISA, load). Writes results.json and results.md here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.zoo import data as zdata
from benchmarks.zoo.models import ZOO, ZooModel, cache_dir, fetch
from lowbit.metrics import METRICS

HERE = Path(__file__).resolve().parent
PRESETS = ("fp16", "int8", "int8-fast", "int8-transformer", "w4a8", "int8-dynamic")
PEERS = ("ort-static", "ort-dynamic")
LOWBIT = Path(sys.executable).with_name("lowbit")
# recurrent models: calibrated on whole utterances with their state carried (zdata.save_sequences)
MIN_ROUNDS, MAX_ROUNDS = 20, 400  # interleaved latency rounds: at least enough for a 95% interval
MACHINE = ""  # set by main(): machine() at the start of the run
STATEFUL = {"vad_stream": ["--stateful", "state->stateN"], "vad_sequence": ["--stateful", "h->hn,c->cn"]}


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as lowbit.verify: no busy waits
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_all(sess: ort.InferenceSession, entry: ZooModel, runs: list[dict]) -> np.ndarray:
    """The scored output over all evaluation runs, batch first. Streaming VAD feeds each
    utterance chunk by chunk, carrying its own state, as silero's own wrapper does."""
    out_name = entry.output or sess.get_outputs()[0].name
    outs = []
    for run in runs:
        if entry.data == "vad_stream":
            state = np.zeros((2, 1, 128), np.float32)
            probs = []
            for chunk in run["input"]:
                p, state = sess.run(None, {"input": chunk[None], "state": state, "sr": np.array(16000, np.int64)})
                probs.append(p)
            outs.append(np.concatenate(probs))
        else:
            outs.append(np.moveaxis(sess.run([out_name], run)[0], entry.batch_axis, 0))
    return np.concatenate(outs).astype(np.float64)


SAME_SPEED = 0.02  # speed-ups within 2% of 1 are the same speed (see `latency`)


def latency(fp32: Path, cand: Path, feeds: dict, budget_s: float = 0.8, blocks: int = 2) -> dict:
    """FP32 and the candidate at 1 thread, timed interleaved in shuffled order each round by the
    calling thread's CPU time, in `blocks` groups of rounds with fresh sessions
    (lowbit.verify.latency): the speed-up is the ratio
    of the medians, with a 95% bootstrap interval over blocks and rounds. 'slower' only where the
    whole interval lies below 1 - SAME_SPEED: a ratio under 1 within noise is not a slowdown, and
    neither is a difference two sessions of one model show (0.6%, with an interval below 1)."""
    from lowbit.verify.latency import measure_latency, speedup_interval

    import onnx

    models = {"fp32": onnx.load(str(fp32)).SerializeToString(),  # external data, if any, read in
              "cand": onnx.load(str(cand)).SerializeToString()}
    probe = measure_latency(models, feeds, threads=(1,), runs=3, warmup=1, clock="thread")
    per_round = sum(v["1"]["median"] for v in probe.values()) / 1e3
    runs = int(min(MAX_ROUNDS, max(MIN_ROUNDS, budget_s / max(per_round, 1e-6))))
    # CPU time of the calling thread: the shared machine's other jobs do not count (lowbit.verify.latency)
    res = measure_latency(models, feeds, threads=(1,), runs=runs, warmup=3, keep_samples=True, blocks=blocks,
                          clock="thread")
    a, b = res["fp32"]["1"], res["cand"]["1"]
    ratio, lo, hi = speedup_interval(a["samples"], b["samples"], blocks=blocks)
    return {"fp32_ms": round(a["median"], 4), "ms": round(b["median"], 4), "speedup": round(ratio, 4),
            "speedup_ci": [round(lo, 4), round(hi, 4)], "latency_rounds": runs, "slower": hi < 1.0 - SAME_SPEED,
            "latency_clock": "thread CPU"}


def latency_feeds(entry: ZooModel, runs: list[dict]) -> dict:
    if entry.data == "vad_stream":
        return {"input": runs[0]["input"][:1], "state": np.zeros((2, 1, 128), np.float32),
                "sr": np.array(16000, np.int64)}
    return runs[0]


def quantize_cmd(config: str, model: Path, folder: Path, out: Path, data: str = "") -> list[str]:
    if config in PEERS:
        return [sys.executable, "-m", "benchmarks.zoo.peer", config.split("-")[1], str(model),
                str(folder / "calib_runs.npz"), str(out)]
    cmd = [str(LOWBIT), "quantize", str(model), "--precision", config, "--no-verify", "-o", str(out),
           "--report-json", str(report_path(out))]  # the report holds the seconds per stage
    if config == "int8-dynamic":
        return cmd
    if data in STATEFUL:
        return cmd + ["--calib", str(zdata.save_sequences(data, folder)), *STATEFUL[data]]
    return cmd + ["--calib", str(folder / "calib.npz")]


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.json")


def stage_seconds(report: Path) -> dict | None:
    """{stage: seconds} of a lowbit run (the report's quantizer.stages), or None without a report."""
    try:
        return {k: round(float(v), 2) for k, v in json.loads(report.read_text())["quantizer"]["stages"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def dominant_stage(stages: dict) -> tuple[str, float]:
    """The innermost stage that took longest: 'calibrate+plan' holds the 'plan:*' steps, and
    'plan:keep-if-better' its own 'plan:keep-if-better:*' ones, so only leaves compete."""
    def parent(k: str) -> bool:
        return k == "total_quantize" or any(o.startswith(k + ":") for o in stages) or (
            k == "calibrate+plan" and any(o.startswith("plan:") for o in stages))
    leaves = {k: v for k, v in stages.items() if not parent(k)}
    return max(leaves.items(), key=lambda kv: kv[1]) if leaves else ("", 0.0)


def machine() -> str:
    """The CPU, its vector / integer ISA and its load: the speed-ups are this machine's."""
    from lowbit.target.cpu import this_cpu
    from lowbit.target.layer_costs import _cpu_name

    try:
        flags = next(ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        flags = []
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in flags]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{_cpu_name()}, {os.cpu_count()} cores, ISA {' '.join(isa) or 'baseline'} ({this_cpu().describe()}); "
            f"onnxruntime {ort.__version__}; load average {load:.1f} at start")


def last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if "Error" in ln or "error" in ln or ln.startswith("lowbit:")]
    return (errs or lines or [""])[-1][:300]


def measure(entry: ZooModel, config: str, model: Path, folder: Path, runs, reference, timeout: int) -> dict:
    out = folder / f"{config}.onnx"
    for stale in [*folder.glob(f"{config}.*onnx*"), report_path(out)]:
        stale.unlink(missing_ok=True)
    cmd = quantize_cmd(config, model, folder, out, entry.data)
    t0, cpu0 = time.perf_counter(), _children_cpu()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(HERE.parents[1]),
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", f"{e.stdout or ''}{e.stderr or ''}"
        text = text.decode() if isinstance(text, bytes) else text
    # CPU seconds of the quantizer process: on a shared machine its wall time also counts other jobs
    rec = {"model": entry.name, "config": config, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1),
           "cpu_s": round(_children_cpu() - cpu0, 1),
           "traceback": "Traceback (most recent call last)" in text, "machine": MACHINE}
    stages = stage_seconds(report_path(out))
    if stages:
        rec["stages"] = stages
        rec["dominant_stage"] = list(dominant_stage(stages))
    if rc != 0 or not out.exists():
        rec["error"] = "timeout" if rc == "timeout" else last_error_line(text) or "no output written"
        return rec
    size = sum(f.stat().st_size for f in folder.glob(f"{config}.onnx*"))
    rec["size_pct"] = round(100 * size / sum(f.stat().st_size for f in model.parent.glob(model.name + "*")), 1)
    try:
        cand = run_all(session(out), entry, runs)
        rec.update(latency(model, out, latency_feeds(entry, runs)))
    except Exception as e:  # noqa: BLE001 - a model ORT cannot load or run is a result, recorded
        rec["error"] = f"onnxruntime: {type(e).__name__}: {str(e).splitlines()[0][:240]}"
        return rec
    rec["metric"] = METRICS.create(entry.metric, **entry.metric_options).score(reference, cand)
    for name, opts in entry.extra_metrics:
        rec[name] = METRICS.create(name, **opts).score(reference, cand)
    return rec


def converted(model: Path, opset: int, folder: Path) -> Path:
    """`model` converted to `opset` by onnx's version converter (what lowbit's opset error suggests)."""
    import onnx
    from onnx import version_converter

    out = folder / model.name
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(version_converter.convert_version(onnx.load(str(model)), opset), str(out))
    return out


def speed_cell(r: dict) -> str:
    if "speedup" not in r:
        return "-"
    ci = r.get("speedup_ci")
    cell = f"{r['speedup']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    return cell + (" SLOWER" if r.get("slower") else "")


def render(results: list[dict]) -> str:
    from benchmarks.zoo.summary import machines as machine_lines

    machines = machine_lines(results)
    lines = ["# lowbit zoo: every preset and ORT's quantizers on pip-shipped ONNX models", "",
             "Task metric of each quantized model vs FP32 on held-out realistic data (see "
             "`benchmarks/zoo/models.py`); size in % of the FP32 file; speed-up = FP32 / quantized "
             "median latency at 1 thread, FP32 and the variant timed interleaved (shuffled each round, "
             "fresh sessions per block) by the CPU time of the thread that runs the graph (the shared "
             "machine's other jobs do not count), with its 95% bootstrap interval; SLOWER only where the "
             "whole interval lies below 0.98 (two sessions of one model differed by 0.6%). "
             "quantize s: wall seconds of the quantizer process. "
             "Generated by `python -m benchmarks.zoo.run`.", "",
             *(f"Machine: {m}" for m in machines), "",
             "| model | metric | config | result | size % | speed-up [95% CI] | metric vs FP32 | extra | quantize s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        e = ZOO[r["model"].split("@")[0]]
        extra = ", ".join(f"{n} {r[n]:.3g}" for n, _ in e.extra_metrics if n in r)
        res = "ok" if "metric" in r else ("TIMEOUT" if r.get("error") == "timeout" else
                                           ("TRACEBACK: " if r["traceback"] else "error: ") + r.get("error", ""))
        fmt = lambda k, f: format(r[k], f) if k in r else "-"  # noqa: E731
        lines.append(f"| {r['model']} | {e.metric} | {r['config']} | {res.replace('|', '/')} | {fmt('size_pct', '.1f')} "
                     f"| {speed_cell(r)} | {fmt('metric', '.4f')} | {extra} | {r['wall_s']} |")
    timed = [r for r in results if r["config"] == "int8" and r.get("stages")]
    if timed:
        lines += ["", "## `int8`: where the quantization time goes", "",
                  "Wall seconds per stage from the report of each run (`quantizer.stages`); the dominant stage is the "
                  "innermost one that took longest; CPU s: user + system seconds of the quantizer process (on a "
                  "machine shared with other jobs its wall time exceeds that).",
                  "", "| model | total s | CPU s | dominant stage | s | other stages over 1 s |", "|---|---|---|---|---|---|"]
        for r in timed:
            st, (dom, dom_s) = r["stages"], r.get("dominant_stage") or dominant_stage(r["stages"])
            others = ", ".join(f"{k} {v:.1f}" for k, v in sorted(st.items(), key=lambda kv: -kv[1])
                               if k not in (dom, "total_quantize", "calibrate+plan") and v >= 1.0)
            lines.append(f"| {r['model']} | {st.get('total_quantize', r['wall_s']):.1f} | {r.get('cpu_s', '-')} | {dom} "
                         f"| {dom_s:.1f} | {others} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--configs", default=",".join(PRESETS + PEERS))
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--opset", type=int, default=0,
                    help="first convert each model to this opset (onnx.version_converter), as lowbit's hint says")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    global MACHINE
    MACHINE = machine()
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else []
    for name in args.models.split(","):
        entry, model = ZOO[name], fetch(name)
        folder = cache_dir() / "runs" / name
        if not (folder / "eval.npz").exists():
            zdata.save(zdata.build(entry.data), folder)
        runs = zdata.load_runs(folder / "eval.npz")
        label = name
        if args.opset:
            model, label = converted(model, args.opset, folder / f"opset{args.opset}"), f"{name}@opset{args.opset}"
            folder = model.parent
            for f in ("calib.npz", "calib_runs.npz"):
                (folder / f).write_bytes((cache_dir() / "runs" / name / f).read_bytes())
        reference = run_all(session(model), entry, runs)
        for config in args.configs.split(","):
            rec = {**measure(entry, config, model, folder, runs, reference, args.timeout), "model": label}
            results = [r for r in results if (r["model"], r["config"]) != (label, config)] + [rec]
            path.write_text(json.dumps(results, indent=1))
            (args.out / "results.md").write_text(render(results))
            print(json.dumps(rec), flush=True)  # progress for the person running the benchmark


if __name__ == "__main__":
    main()
