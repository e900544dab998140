"""The benchmark's markdown: machine header, the bars the project tracks, one table per model."""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEMA = "lowbit.benchmark/1"
BAR_MODEL = "mobilenet_v2"


def _num(v: float | None, spec: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return format(v, spec)


def _bar(name: str, value: float | None, ok: Callable[[float], bool], shown: str) -> dict:
    if value is None:
        return {"bar": name, "value": None, "status": "NOT MEASURED", "shown": shown}
    return {"bar": name, "value": value, "status": "PASS" if ok(value) else "FAIL", "shown": shown}


def check_bars(models: dict) -> list[dict]:
    """The bars the project tracks, on MobileNetV2 (lowbit's 'int8' and 'fp16' presets)."""
    if BAR_MODEL not in models:
        return [{"bar": "all bars", "value": None, "status": "NOT MEASURED", "shown": "MobileNetV2 was not run"}]
    v = models[BAR_MODEL]["variants"]
    fp32, i8, f16 = v["fp32"], v.get("lowbit:int8", {}), v.get("lowbit:fp16", {})

    def lat(var: dict, t: str) -> float | None:
        return var.get("latency_ms", {}).get(t, {}).get("median")

    bars = []
    pct = i8.get("size_pct_fp32")
    bars.append(_bar("MobileNetV2 INT8 file ≤ 27% of FP32", pct, lambda x: x <= 27.0, f"{_num(pct, '.1f')}%"))
    pct = f16.get("size_pct_fp32")
    bars.append(_bar("MobileNetV2 FP16 file ≤ 51% of FP32", pct, lambda x: x <= 51.0, f"{_num(pct, '.1f')}%"))
    for t, need, name in (("1", 1.4, "INT8 1-thread latency ≤ FP32 / 1.4"),
                          ("2", 1.0, "INT8 never slower than FP32 at 2 threads")):
        s = i8.get("speedup", {}).get(t)
        shown = f"{_num(s, '.2f')}x ({_num(lat(i8, t), '.2f')} ms vs FP32 {_num(lat(fp32, t), '.2f')} ms)"
        bars.append(_bar(f"{name} (speed-up ≥ {need})", s, lambda x, n=need: x >= n, shown))
    agree = (f16.get("fidelity") or {}).get("top1_agreement")
    agree = None if agree is None else 100.0 * agree
    bars.append(_bar("FP16 top-1 agreement with FP32 ≥ 99.5%", agree, lambda x: x >= 99.5, f"{_num(agree, '.2f')}%"))
    for label, var in v.items():
        par = var.get("parity")
        if label.startswith("lowbit:") and par:
            frac = 100.0 * par["within_one_step"]
            shown = f"{frac:.3f}% within one step ({'passed' if par['passed'] else 'failed'} lowbit's check)"
            bars.append(_bar(f"{label} parity ≥ 99.9%", frac, lambda x, p=par: x >= 99.9 and p["passed"], shown))
    return bars


def _lat(v: dict, t: str) -> str:
    m = v.get("latency_ms", {}).get(t)
    return "—" if not m else f"{m['median']:.2f}"


def _parity(p: dict | None) -> str:
    if not p:
        return "—"
    return f"{'PASS' if p['passed'] else 'FAIL'} {100 * p['within_one_step']:.2f}%"


def _quant(q: dict | None) -> tuple[str, str]:
    if not q:
        return "—", "—"
    return f"{q['wall_s']:.1f}", f"{q['peak_rss_mb']:.0f} (+{q['peak_rss_mb'] - q['rss_before_mb']:.0f})"


def model_table(m: dict, threads: list[int], cores: int) -> list[str]:
    rnd = m["random_weights"]
    tag = " (random weights)" if rnd else ""
    lines = [f"## {m['title']}: {m['weights']}", ""]
    if rnd:
        lines += ["**Random weights: only size and latency mean anything here.** Fidelity columns are marked "
                  "'random weights': they compare untrained logits and say nothing about a trained ResNet-18; "
                  "the labeled top-1 of an untrained network is chance.", ""]
    load = m.get("load_avg_1min_during_latency") or []
    if load and max(load) > cores:
        lines += [f"**Warning: the machine was busy while timing** (1-minute load average {load[0]:.1f} before, "
                  f"{load[1]:.1f} after, on {cores} cores): other processes competed for the CPU, so the "
                  "latencies are inflated and even the interleaved ratios are noisy, 2-thread ones most.", ""]
    head = ["variant", "size MB", "% FP32"]
    for t in threads:
        head += [f"{t}T ms (median)", f"{t}T speed-up"]
    head += [f"top-1 agree{tag}", f"SQNR dB{tag}", f"KL{tag}", f"labeled top-1{tag}", "parity",
             "quantize s", "peak RSS MB (+Δ)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, v in m["variants"].items():
        if "size_bytes" not in v:
            lines.append(f"| {label} | " + " | ".join(["—"] * (len(head) - 2)) + f" | {v.get('error', '')} |")
            continue
        f = v.get("fidelity") or ({"top1_agreement": 1.0, "kl": 0.0} if label == "fp32" else {})
        row = [label, f"{v['size_mb']:.2f}", f"{v['size_pct_fp32']:.1f}"]
        for t in threads:
            row += [_lat(v, str(t)), _num(v.get("speedup", {}).get(str(t)), ".2f") + ("x" if "speedup" in v else "")]
        qs, rss = _quant(v.get("quantize"))
        row += [_num(f.get("top1_agreement"), ".3f"), _num(f.get("sqnr_db"), ".1f"), _num(f.get("kl"), ".4f"),
                _num(v.get("labeled_top1"), ".2f"), _parity(v.get("parity")), qs, rss]
        if v.get("error"):
            row[-1] += f" — error: {v['error'][:120]}"
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def render_markdown(r: dict) -> str:
    mach, s = r["machine"], r["settings"]
    ver = mach["versions"]
    lines = [
        "# lowbit benchmark" + (" (QUICK smoke run: numbers not representative)" if s["quick"] else ""), "",
        f"- Machine: {mach['cpu']}, {mach['logical_cores']} logical cores ({mach['usable_cores']} usable), "
        f"ISA: {', '.join(mach['isa']) or 'none detected'}",
        f"- ONNX Runtime {mach['onnxruntime']} (CPUExecutionProvider), lowbit {ver.get('lowbit')} "
        f"(source {mach.get('lowbit_source', 'unknown')}), "
        f"onnx {ver.get('onnx')}, torch {ver.get('torch')}, nncf {ver.get('nncf') or 'not installed'}, "
        f"Python {ver.get('python')}",
        f"- Date: {mach['date']}; command: `{r['command']}`; took {r.get('elapsed_s', 0):.0f} s",
        f"- Data: calibration {s['calib_samples']} real photo crops (`photo_arrays('calib')`), evaluation "
        f"{s['eval_samples']} crops of other photos (`photo_arrays('eval')`), {s['labeled_samples']} labeled "
        f"ImageNet photos; lowbit parity on the first {s['parity_samples']} eval crops.",
        f"- Latency: batch 1, median of {s['latency_runs']} runs per thread count (p10/p90 in results.json); "
        "all variants of a model timed interleaved in one process, one session per variant per thread count; "
        "speed-up = FP32 median / variant median from the same run.",
        "- Quantize time and peak RSS: each quantization ran alone in a fresh subprocess; peak RSS is the "
        "child's VmHWM (includes Python and imports), +Δ is the rise over its RSS just before the call.",
        "- Fidelity is measured against FP32 on the evaluation crops: top-1 agreement, SQNR of the logits, "
        "mean KL(FP32 softmax ‖ variant softmax).",
        "",
        "## Bars (MobileNetV2, lowbit presets)", "",
        "| bar | result | value |", "|---|---|---|",
    ]
    lines += [f"| {b['bar']} | **{b['status']}** | {b['shown']} |" for b in r["bars"]]
    lines.append("")
    for m in r["models"].values():
        lines += model_table(m, s["threads"], mach["usable_cores"])
    return "\n".join(lines)
