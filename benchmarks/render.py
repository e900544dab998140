"""The benchmark's markdown: machine header, the bars the project tracks, one table per model."""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEMA = "lowbit.benchmark/2"  # 2: per-model fidelity columns, MiniLM and the face descriptor
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


def _lat_ms(var: dict, t: str) -> float | None:
    return var.get("latency_ms", {}).get(t, {}).get("median")


def _faster_by(a: dict, b: dict, t: str) -> tuple[float, float, float] | None:
    """How many times faster `a` ran than `b` at `t` threads (median ratio) and its 95% interval,
    from the rounds both were timed in; None where the run kept no samples."""
    sa = a.get("latency_ms", {}).get(t, {}).get("samples")
    sb = b.get("latency_ms", {}).get(t, {}).get("samples")
    if not sa or not sb or len(sa) != len(sb):
        return None
    from lowbit.verify import speedup_interval

    return speedup_interval(sb, sa, blocks=int(a["latency_ms"][t].get("blocks", 1)))


def _same_kernels(a: dict, b: dict) -> bool:
    return bool(a.get("kernels")) and a.get("kernels") == b.get("kernels")


def mobilenet_bars(v: dict) -> list[dict]:
    """The size / speed / FP16 bars the project set on MobileNetV2 (lowbit's 'int8' and 'fp16')."""
    fp32, i8, f16 = v["fp32"], v.get("lowbit:int8", {}), v.get("lowbit:fp16", {})
    bars = []
    pct = i8.get("size_pct_fp32")
    bars.append(_bar("MobileNetV2 INT8 file ≤ 27% of FP32", pct, lambda x: x <= 27.0, f"{_num(pct, '.1f')}%"))
    pct = f16.get("size_pct_fp32")
    bars.append(_bar("MobileNetV2 FP16 file ≤ 51% of FP32", pct, lambda x: x <= 51.0, f"{_num(pct, '.1f')}%"))
    for t, need, name in (("1", 1.6, "INT8 1-thread latency ≤ FP32 / 1.6"),
                          ("2", 1.0, "INT8 never slower than FP32 at 2 threads")):
        s = i8.get("speedup", {}).get(t)
        shown = f"{_num(s, '.2f')}x ({_num(_lat_ms(i8, t), '.2f')} ms vs FP32 {_num(_lat_ms(fp32, t), '.2f')} ms)"
        bars.append(_bar(f"MobileNetV2 {name} (speed-up ≥ {need})", s, lambda x, n=need: x >= n, shown))
    agree = (f16.get("fidelity") or {}).get("top1_agreement")
    agree = None if agree is None else 100.0 * agree
    bars.append(_bar("MobileNetV2 FP16 top-1 agreement with FP32 ≥ 99.5%", agree, lambda x: x >= 99.5,
                     f"{_num(agree, '.2f')}%"))
    agree = (i8.get("fidelity") or {}).get("top1_agreement")
    agree = None if agree is None else 100.0 * agree
    bars.append(_bar("MobileNetV2 INT8 top-1 agreement with FP32 ≥ 85%", agree, lambda x: x >= 85.0,
                     f"{_num(agree, '.2f')}%"))
    return bars


def resnet_bars(v: dict) -> list[dict]:
    """ResNet-18 INT8 ≥ 1.9x faster than FP32 at 1 thread (random weights: speed does not depend on them)."""
    fp32, i8 = v["fp32"], v.get("lowbit:int8", {})
    s = i8.get("speedup", {}).get("1")
    shown = f"{_num(s, '.2f')}x ({_num(_lat_ms(i8, '1'), '.2f')} ms vs FP32 {_num(_lat_ms(fp32, '1'), '.2f')} ms)"
    return [_bar("ResNet-18 INT8 1-thread latency ≤ FP32 / 1.9 (speed-up ≥ 1.9)", s, lambda x: x >= 1.9, shown)]


def _column(m: dict, key: str) -> dict:
    return next((c for c in m.get("columns", []) if c["key"] == key), {"key": key, "header": key, "fmt": ".4f",
                                                                       "higher_is_better": True})


def model_bars(m: dict) -> list[dict]:
    """The bars every model is held to: lowbit's INT8 (the model's headline preset) at least as faithful
    as the best peer and no slower than ONNX Runtime's quantize_static; no lowbit preset slower than FP32;
    lowbit's INT8 quantization peaking in memory no higher than any calibrating peer; parity per preset."""
    v, title, head = m["variants"], m["title"], m.get("headline", "lowbit:int8")
    hv = v.get(head, {})
    ran_peers = {k: x for k, x in v.items() if x.get("kind") == "peer" and "size_bytes" in x}
    bars = []

    if not m.get("random_weights"):
        c = _column(m, m.get("primary", "top1_agreement"))
        hib = c.get("higher_is_better", True)
        mine = (hv.get("fidelity") or {}).get(c["key"])
        scored = {k: (x.get("fidelity") or {}).get(c["key"]) for k, x in ran_peers.items()}
        scored = {k: s for k, s in scored.items() if s is not None}
        name = f"{title}: {head} {c['header']} {'≥' if hib else '≤'} best peer's"
        if not scored or mine is None:
            why = "no peer measured (run with --peers)" if not scored else f"{head} not measured"
            bars.append({"bar": name, "value": None, "status": "NOT MEASURED", "shown": why})
        else:
            best = (max if hib else min)(scored, key=scored.get)
            diff = mine - scored[best]
            shown = f"{_num(mine, c['fmt'])} vs {best} {_num(scored[best], c['fmt'])}"
            bars.append(_bar(name, diff, lambda x, h=hib: x >= 0 if h else x <= 0, shown))

    ort = {k: x for k, x in ran_peers.items() if k.startswith("ort-static") and "latency_ms" in x}
    name = f"{title}: {head} latency ≤ ORT quantize_static's (fastest calibration, every thread count)"
    if not ort or "latency_ms" not in hv:
        why = "no ORT quantize_static model timed" if not ort else f"{head} not timed"
        bars.append({"bar": name, "value": None, "status": "NOT MEASURED", "shown": why})
    else:
        slower, parts = [], []
        for t in hv["latency_ms"]:
            k = min(ort, key=lambda k, t=t: _lat_ms(ort[k], t) or float("inf"))
            mine, theirs = _lat_ms(hv, t), _lat_ms(ort[k], t)
            if mine is None or theirs is None:
                continue
            ci = _faster_by(hv, ort[k], t)
            # slower means slower beyond the run's noise: the whole 95% interval below 1
            slower.append(ci[2] < 1.0 if ci else mine > theirs)
            same = ", same kernels" if _same_kernels(hv, ort[k]) else ""
            parts.append(f"{t}T {mine:.2f} vs {theirs:.2f} ms ({k}{same}"
                         + (f"; lowbit {ci[0]:.3f}x as fast, 95% CI {ci[1]:.3f}–{ci[2]:.3f})" if ci else ")"))
        value = float(sum(slower)) if parts else None
        bars.append(_bar(name + ", not slower beyond noise", value, lambda x: x == 0, "; ".join(parts) or "—"))

    from lowbit.presets import PRESETS

    # lowbit variants that are not presets (the size-first block-wise INT4 of lowbit.transformers) are
    # in the table but not held to this bar
    presets = {k: x for k, x in v.items() if k.startswith("lowbit:") and k.split(":", 1)[1] in PRESETS}
    mine_v = {k: x for k, x in presets.items() if "speedup" in x}
    untimed = [k for k in presets if k not in mine_v]
    name = f"{title}: no lowbit preset slower than FP32 at any thread count"
    if not mine_v:
        bars.append({"bar": name, "value": None, "status": "NOT MEASURED", "shown": "no lowbit variant timed"})
    else:
        fp32 = v["fp32"]
        worst = min(s for x in mine_v.values() for s in x["speedup"].values())
        below, slower = [], []
        for k, x in mine_v.items():
            for t, sp in x["speedup"].items():
                if sp >= 1.0:
                    continue
                ci = _faster_by(x, fp32, t)
                same = ", same kernels as FP32" if _same_kernels(x, fp32) else ""
                below.append(f"{k} {t}T {sp:.2f}x" + (f" (95% CI {ci[1]:.2f}–{ci[2]:.2f}{same})" if ci else ""))
                if ci is None or ci[2] < 1.0:
                    slower.append(f"{k} {t}T")
        shown = f"slowest {worst:.2f}x"
        if below:
            shown += f"; below 1.00x: {'; '.join(below)}"
        shown += f"; slower beyond noise: {', '.join(slower) if slower else 'none'}"
        if untimed:
            shown += f" ({len(untimed)} preset(s) not timed: {', '.join(untimed)})"
        others = [k for k in v if k.startswith("lowbit:") and k not in presets]
        if others:
            shown += f"; not presets, not held to this bar: {', '.join(others)}"
        bars.append(_bar(name + " (beyond noise: 95% CI below 1.00x)", float(len(slower)), lambda x: x == 0, shown))

    calibrating = {k: x for k, x in ran_peers.items() if k != "ort-dynamic" and x.get("quantize")}
    name = f"{title}: {head} quantize peak RSS ≤ every calibrating peer's"
    mine_q = hv.get("quantize")
    if not calibrating or not mine_q:
        why = "no calibrating peer ran (run with --peers)" if not calibrating else f"{head} did not run"
        bars.append({"bar": name, "value": None, "status": "NOT MEASURED", "shown": why})
    else:
        low = min(calibrating, key=lambda k: calibrating[k]["quantize"]["peak_rss_mb"])
        theirs = calibrating[low]["quantize"]["peak_rss_mb"]
        shown = f"{mine_q['peak_rss_mb']:.0f} MB vs {low} {theirs:.0f} MB (lowest calibrating peer)"
        bars.append(_bar(name, mine_q["peak_rss_mb"] - theirs, lambda x: x <= 0, shown))

    for label, var in v.items():
        par = var.get("parity")
        if label.startswith("lowbit:") and par:
            frac = 100.0 * par["within_one_step"]
            shown = f"{frac:.3f}% within one step ({'passed' if par['passed'] else 'failed'} lowbit's check)"
            bars.append(_bar(f"{title}: {label} parity ≥ 99.9%", frac, lambda x, p=par: x >= 99.9 and p["passed"],
                             shown))
    return bars


def check_bars(models: dict) -> list[dict]:
    """Every bar the project tracks: MobileNetV2's own (when it ran), then each model's."""
    bars = []
    for name, m in models.items():
        if m.get("error"):
            bars.append({"bar": f"{m['title']}: all bars", "value": None, "status": "NOT MEASURED",
                         "shown": m["error"]})
            continue
        if name == BAR_MODEL:
            bars += mobilenet_bars(m["variants"])
        if name == "resnet18":
            bars += resnet_bars(m["variants"])
        bars += model_bars(m)
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
    if m.get("error"):
        return lines + [f"**Not run**: {m['error']}", ""]
    if rnd:
        lines += ["**Random weights: only size and latency mean anything here.** Fidelity columns are marked "
                  "'random weights': they compare untrained outputs and say nothing about the trained network; "
                  "a labeled accuracy of an untrained network is chance.", ""]
    if m.get("data"):
        lines += [f"- Data: {m['data']}"]
    if m.get("metrics"):
        lines += [f"- Fidelity: {m['metrics']}"]
    if m.get("latency_input"):
        lines += ["- Latency input: " + ", ".join(f"{k} {tuple(s)}" for k, s in m["latency_input"].items())]
    lines.append("")
    load = m.get("load_avg_1min_during_latency") or []
    if load and max(load) > cores:
        lines += [f"**Warning: the machine was busy while timing** (1-minute load average {load[0]:.1f} before, "
                  f"{load[1]:.1f} after, on {cores} cores): other processes competed for the CPU, so the "
                  "latencies are inflated and even the interleaved ratios are noisy, 2-thread ones most.", ""]
    cols = m.get("columns", [])
    head = ["variant", "size MB", "% FP32"]
    for t in threads:
        head += [f"{t}T ms (median)", f"{t}T speed-up"]
    head += [f"{c['header']}{tag}" for c in cols] + ["parity", "quantize s", "peak RSS MB (+Δ)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for label, v in m["variants"].items():
        if v.get("error"):
            notes.append(f"- `{label}`: **error**: {v['error'][:400]}")
        notes += [f"- `{label}`: {n}" for n in v.get("notes", []) if "fail" in n]
        if "size_bytes" not in v:
            lines.append(f"| {label} | " + " | ".join(["—"] * (len(head) - 2)) + f" | {v.get('error', '')[:120]} |")
            continue
        f = v.get("fidelity") or {}
        row = [label, f"{v['size_mb']:.2f}", f"{v['size_pct_fp32']:.1f}"]
        for t in threads:
            row += [_lat(v, str(t)), _num(v.get("speedup", {}).get(str(t)), ".2f") + ("x" if "speedup" in v else "")]
        qs, rss = _quant(v.get("quantize"))
        row += [_num(f.get(c["key"]), c["fmt"]) for c in cols] + [_parity(v.get("parity")), qs, rss]
        if v.get("error"):
            row[-1] += f" — error: {v['error'][:120]}"
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines += ["", "Failures and notes:", "", *notes]
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
        "- Data and fidelity metrics: per model, below; calibration and evaluation data are always disjoint.",
        f"- Latency: batch 1, median of {s['latency_runs']} runs per thread count (p10/p90 in results.json); "
        "all variants of a model timed interleaved in one process (a shuffled order each round), one session per "
        "variant per thread count, "
        "every session (FP32 and peers alike) with `session.intra_op.allow_spinning=0` (on this 2-vCPU machine a "
        "spin-waiting worker slowed FP32 MobileNetV2 at 2 threads from 7.4 to 18.5 ms); "
        "speed-up = FP32 median / variant median from the same run. 'Not slower' bars count a variant slower only "
        "when the 95% bootstrap interval of that ratio (resampling blocks of rounds, each block timed "
        "with new sessions, then rounds within them; every round's time in results.json) lies below 1; 'same kernels' means ONNX Runtime runs the same op counts after its graph "
        "optimizations (`kernels` in results.json), where only noise can separate two variants.",
        "- Quantize time and peak RSS: each quantization ran alone in a fresh subprocess; peak RSS is the "
        "child's VmHWM over the call (window reset just before it; includes Python, imports and the calibration "
        "data already resident), +Δ is the rise over its RSS just before the call.",
        "",
        "## Bars", "",
        "Per model, lowbit's INT8 is its headline INT8 preset (`lowbit:int8`; `lowbit:int8-transformer` for "
        "MiniLM); fidelity is compared on the model's primary (first) fidelity column, not for random weights; "
        "'calibrating peers' are every peer but `ort-dynamic`.", "",
        "| bar | result | value |", "|---|---|---|",
    ]
    lines += [f"| {b['bar']} | **{b['status']}** | {b['shown']} |" for b in r["bars"]]
    lines.append("")
    for m in r["models"].values():
        lines += model_table(m, s["threads"], mach["usable_cores"])
    return "\n".join(lines)
