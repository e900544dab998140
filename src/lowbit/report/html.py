"""Render a ``lowbit.report/1`` dict as one self-contained HTML page.

The page needs nothing from the network: CSS is inline and charts are inline base64 PNGs. Every
string taken from the report is escaped; any key may be missing or null and is then left out.

>>> page = render_html({"title": "demo", "variants": [{"label": "FP32", "size_bytes": 1_000_000}]})
>>> page.startswith("<!DOCTYPE html>")
True
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Callable

from lowbit.report import html_task, plots
from lowbit.report.analysis_plots import all_charts

__all__ = ["render_html"]

_TEMPLATE = Path(__file__).with_name("template.html")  # shipped as package data (pyproject: report/*.html)
_TITLE = "lowbit quantization report"
_DASH = '<span class="muted">—</span>'


def _e(x: Any) -> str:
    return "" if x is None else html.escape(str(x), quote=True)


_num = plots._number


def _name(x: Any) -> str:
    """A node or tensor name, escaped, that may wrap after its separators ('/model.22/cv3/conv'
    breaks at '/', not inside 'Conv' nor off the table's edge)."""
    out = _e(x)
    for sep in ("/", "_", "."):
        out = out.replace(sep, sep + "<wbr>")
    return out


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _dicts(x: Any) -> list[dict]:
    return [i for i in x if isinstance(i, dict)] if isinstance(x, (list, tuple)) else []


def _f(x: Any, spec: str = ".2f", suffix: str = "") -> str | None:
    n = _num(x)
    return None if n is None else f"{n:{spec}}{suffix}"


def _frac(x: Any) -> float | None:
    """A rate: a fraction in [0, 1], as the report's schema states (lowbit.report.schema)."""
    return _num(x)


def _pct(x: Any, spec: str = ".2f") -> str | None:
    n = _frac(x)
    return None if n is None else f"{100 * n:{spec}}%"


def _energy(x: Any) -> str | None:
    n = _num(x)
    return None if n is None else f"{n:,.0f} µJ" if abs(n) >= 100 else f"{n:.3g} µJ"


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{_e(text)}</span>'


def _join(*parts: Any) -> str:
    return " · ".join(p for p in parts if p)


def _sub(text: str | None) -> str:
    return f'<br><span class="sub">{text}</span>' if text else ""


def _grade(x: float, ok: float, warn: float) -> str:
    return "ok" if x >= ok else "warn" if x >= warn else "bad"


def _lat(v: dict, t: str) -> dict:
    """Latency stats of variant ``v`` at ``t`` threads (JSON keys are strings, Python callers may use ints)."""
    return _dict({str(k): s for k, s in _dict(v.get("latency_ms")).items()}.get(t))


def _threads(variants: list[dict]) -> list[str]:
    return sorted({str(k) for v in variants for k in _dict(v.get("latency_ms"))}, key=plots._thread_key)


def _candidates(r: dict) -> list[str] | None:
    """The compared files' labels where the report compares models lowbit did not plan (`lowbit
    eval`: no plan summary, 'precision' holding only the candidates' names), else None."""
    labels = [str(v.get("label")) for v in _dicts(r.get("variants"))[1:]]
    return labels if labels and "nodes" not in r and r.get("precision") == ", ".join(labels) else None


def _header(r: dict) -> str:
    model = _dict(r.get("model"))
    files = _candidates(r)
    precision = ("Candidates", ", ".join(files)) if files else ("Precision", r.get("precision"))
    meta = [("Model", model.get("name")), ("Source", model.get("source")), precision,
            ("Created", r.get("created")), ("Output", r.get("output_path"))]
    items = "".join(f"<span>{k}: <b>{_e(v)}</b></span>" for k, v in meta if v not in (None, ""))
    return f'<header><h1>{_e(r.get("title") or _TITLE)}</h1><div class="meta">{items}</div></header>'


def _verdicts(variants: list[dict]) -> str:
    ref, cards = variants[0], []
    ref_acc, ref_size = _frac(_dict(ref.get("accuracy")).get("top1")), _num(ref.get("size_bytes"))
    t_max = (_threads(variants) or [""])[-1]  # the most threads: the deployment-like setting
    for v in variants[1:]:
        b = []
        par = _dict(v.get("parity"))
        if isinstance(par.get("passed"), bool):
            frac = _pct(par.get("within_one_step"))
            label = f"parity {'passed' if par['passed'] else 'FAILED'}" + (f" ({frac} within 1 step)" if frac else "")
            b.append(_badge(label, "ok" if par["passed"] else "bad"))
        acc = _frac(_dict(v.get("accuracy")).get("top1"))
        if acc is not None:  # the drop against the reference when it has an accuracy, else the value
            d = None if ref_acc is None else 100 * (acc - ref_acc)
            text, kind = (f"top-1 {100 * acc:.2f}%", "info") if d is None else (f"top-1 {d:+.2f} pt", _grade(d, -1, -3))
            b.append(_badge(text, kind))
        fid = _dict(v.get("fidelity"))
        head = (v.get("metrics") or [None])[0]
        if isinstance(head, dict):  # the task metric, not an agreement that may not apply
            b.append(_badge(html_task.verdict_badge(head), "info"))
        agree = None if head else _frac(fid.get("top1_agreement"))
        if agree is not None:
            b.append(_badge(f"agreement {100 * agree:.2f}%", _grade(agree, 0.99, 0.97)))
        sqnr = None if head else _num(fid.get("sqnr_db"))
        if sqnr is not None:
            b.append(_badge(f"SQNR {sqnr:.1f} dB", _grade(sqnr, 30, 20)))
        size = _num(v.get("size_bytes"))
        if size and ref_size:
            b.append(_badge(f"{ref_size / size:.2f}x smaller", "info"))
        m, m_ref = _num(_lat(v, t_max).get("median")), _num(_lat(ref, t_max).get("median"))
        if m and m_ref:
            b.append(_badge(f"{m_ref / m:.2f}x speed @ {t_max} thr", _grade(m_ref / m, 1.05, 0.95)))
        cards.append(f'<div class="card"><h3>{_e(v.get("label") or "variant")}</h3>{"".join(b) or _DASH}</div>')
    note = ('<p class="sub">Green: parity passed, top-1 drop ≤ 1 pt, agreement ≥ 99%, SQNR ≥ 30 dB, '
            'speed-up ≥ 1.05x. Amber: top-1 drop ≤ 3 pt, agreement ≥ 97%, SQNR ≥ 20 dB, speed-up ≥ 0.95x. '
            'Speed is measured at the largest thread count.</p>')
    return f'<h2>Verdict</h2><div class="cards">{"".join(cards)}</div>{note}'


def _summary(variants: list[dict], files: bool = False) -> str:
    """`files`: the candidates are files lowbit did not plan; their 'precision' is only their name."""
    ref, ref_label = variants[0], variants[0].get("label") or "reference"
    ref_size, ref_acc = _num(ref.get("size_bytes")), _frac(_dict(ref.get("accuracy")).get("top1"))
    rows: list[tuple[str, Callable[[dict, bool], str | None]]] = [] if files else [
        ("Precision", lambda v, r: _e(v.get("precision")) or None)]

    def size(v: dict, is_ref: bool) -> str | None:
        n = _num(v.get("size_bytes"))
        rel = None if is_ref or not ref_size or n is None else f"{100 * n / ref_size:.1f}% of {_e(ref_label)}"
        return None if n is None else f"{n / 1e6:.2f} MB" + _sub(rel)
    rows.append(("Size on disk", size))

    def latency(t: str) -> Callable[[dict, bool], str | None]:
        def cell(v: dict, is_ref: bool) -> str | None:
            s = _lat(v, t)
            m, m_ref = _num(s.get("median")), _num(_lat(ref, t).get("median"))
            if m is None:
                return None
            lo, hi, runs = _f(s.get("p10")), _f(s.get("p90")), _num(s.get("runs"))
            speed = "" if is_ref or not (m and m_ref) else f" <b>{m_ref / m:.2f}x</b>"
            spread = _join(lo and hi and f"p10–p90 {lo}–{hi}", runs and f"{int(runs)} runs")
            return f"{m:.3f} ms{speed}" + _sub(spread)
        return cell
    for t in _threads(variants):
        rows.append((f"Latency, {_e(t)} thread{'' if t == '1' else 's'}", latency(t)))  # t may be "auto"

    def fid(key: str, fmt: Callable[[Any], str | None]) -> Callable[[dict, bool], str | None]:
        return lambda v, r: fmt(_dict(v.get("fidelity")).get(key))
    if html_task.has_metrics(variants):  # task metrics, each with n and interval, headline first
        rows += html_task.metric_rows(variants)
    else:  # a report without them: the pooled fidelity figures
        rows += [("SQNR vs FP32", fid("sqnr_db", lambda x: _f(x, ".2f", " dB"))),
                 ("Cosine similarity", fid("cosine", lambda x: _f(x, ".5f"))),
                 ("Top-1 agreement", fid("top1_agreement", _pct)),
                 ("KL divergence", fid("kl", lambda x: _f(x, ".3g"))),
                 ("Fidelity samples", fid("samples", lambda x: _f(x, ",.0f")))]

    def accuracy(v: dict, is_ref: bool) -> str | None:
        a = _dict(v.get("accuracy"))
        top1, n = _frac(a.get("top1")), _num(a.get("n"))
        if top1 is None:
            return None
        delta = None if is_ref or ref_acc is None else f"{100 * (top1 - ref_acc):+.2f} pt"
        return f"{100 * top1:.2f}%" + _sub(_join(n is not None and f"n={int(n):,}", delta))
    rows.append(("Accuracy, top-1", accuracy))

    def parity(v: dict, is_ref: bool) -> str | None:
        p = _dict(v.get("parity"))
        if not p:
            return None
        ok = p.get("passed")
        head = _badge("pass" if ok else "fail", "ok" if ok else "bad") if isinstance(ok, bool) else ""
        within, steps, n = _pct(p.get("within_one_step"), ".3f"), _num(p.get("max_steps")), _num(p.get("elements"))
        detail = _join(within and f"{within} within 1 step", n is not None and f"{int(n):,} elements",
                       steps is not None and f"max error {steps:.3g} step{'' if steps == 1 else 's'}")
        return (head + (f" {within}" if within else "") + _sub(detail)) or None
    def kernels(v: dict, is_ref: bool) -> str | None:
        k = _dict(v.get("kernels"))
        if not k:
            return None
        unfused, kept = k.get("unfused") or [], k.get("kept_float") or []
        head = _badge(f"{len(unfused)} unfused", "bad") if unfused else _badge("all fused", "ok")
        detail = _join(f"{int(k.get('integer_kernels', 0))} integer, {int(k.get('float_kernels', 0))} float kernels",
                       kept and f"{len(kept)} float by plan", unfused and "unfused: " + ", ".join(
                           _e(str(u.get("node"))) for u in unfused[:3]))
        return head + _sub(detail)
    rows += [("Parity (ORT vs simulation)", parity), ("Kernels in ONNX Runtime", kernels),
             ("Energy estimate / inference", lambda v, r: _energy(v.get("energy_uj")))]

    head = "".join(f'<th class="num">{_e(v.get("label") or f"variant {i}")}</th>' for i, v in enumerate(variants))
    body = []
    for label, fn in rows:
        cells = [fn(v, i == 0) for i, v in enumerate(variants)]
        if any(cells):
            tds = "".join(f'<td class="num{" ref" if i == 0 else ""}">{c or _DASH}</td>' for i, c in enumerate(cells))
            body.append(f'<tr><th scope="row">{label}</th>{tds}</tr>')
    many = " many" if len(variants) >= 4 else ""
    return (f'<h2>Summary</h2><div class="wide"><table class="summary{many}"><thead><tr><th>Metric</th>{head}'
            f'</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
            '<p class="sub">Speed-ups (bold) and sizes are relative to the first column. '
            'Energy is an estimate from counted operations and bytes moved, not a measurement.</p>')


def _figure(png: str | None, alt: str, caption: str = "") -> str:
    if not png:
        return ""
    return (f'<figure><img src="data:image/png;base64,{png}" alt="{_e(alt)}">'
            f'{f"<figcaption>{_e(caption)}</figcaption>" if caption else ""}</figure>')


NO_CHARTS = ('<p class="muted">Charts are left out: drawing them needs matplotlib, which is not installed '
             "(pip install 'lowbit[report]').</p>")


def _charts(variants: list[dict]) -> str:
    if not plots.available():
        return f"<h2>Charts</h2>{NO_CHARTS}"
    figs = _figure(plots.size_chart(variants), "model size per variant") + _figure(
        plots.latency_chart(variants), "latency per variant and thread count",
        "Bars: median latency; whiskers: 10th to 90th percentile.")
    return f'<h2>Charts</h2><div class="charts">{figs}</div>' if figs else ""


def _table(headers: list[str], rows: list[list[str]], num: set[int] = frozenset()) -> str:
    th = "".join(f'<th{" class=num" if i in num else ""}>{h}</th>' for i, h in enumerate(headers))
    trs = "".join("<tr>" + "".join(f'<td{" class=num" if i in num else ""}>{c}</td>' for i, c in enumerate(r))
                  + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _nodes(nodes: dict) -> str:
    q, sk = _dicts(nodes.get("quantized")), _dicts(nodes.get("skipped"))
    if not q and not sk:
        return ""
    ops: dict[str, list[str]] = {}  # op type -> precision of each quantized node of that type
    for n in q:
        ops.setdefault(str(n.get("op") or "?"), []).append(str(n.get("precision") or "?"))
    out = [f"<h2>Nodes</h2><h3>Quantized: {len(q)} node{'' if len(q) == 1 else 's'}</h3>"]
    if q:
        out.append(_table(["Op type", "Count", "Precision"], [
            [f"<code>{_e(op)}</code>", str(len(p)), _e(", ".join(sorted(set(p))))]
            for op, p in sorted(ops.items(), key=lambda kv: (-len(kv[1]), kv[0]))], num={1}))
    out.append(f"<h3>Kept in float (skipped): {len(sk)} node{'' if len(sk) == 1 else 's'}</h3>")
    if sk:
        out.append(_table(["Node", "Op type", "Reason"], [
            [f"<code>{_name(n.get('name'))}</code>", f"<code>{_e(n.get('op'))}</code>", _e(n.get("reason"))]
            for n in sk]))
    return "".join(out)


def _layers(layers: Any) -> str:
    rows = _dicts(layers)
    if not rows:
        return ""
    table = _table(["Layer", "Op type", "Precision", "SQNR"], [
        [f"<code>{_name(l.get('name'))}</code>", _e(l.get("op")), _e(l.get("precision")),
         _DASH if (n := _num(l.get("sqnr_db"))) is None else _badge(f"{n:.1f} dB", _grade(n, 30, 20))]
        for l in rows], num={3})
    fig = _figure(plots.layer_sqnr_chart(rows), "per-layer SQNR",
                  "Dashed lines at 20 dB and 30 dB; red below 20 dB, amber below 30 dB.") \
        if plots.available() else NO_CHARTS
    return f'<h2>Per-layer fidelity</h2><div class="grid2"><div>{table}</div><div>{fig}</div></div>'


def _quantizer(q: dict) -> str:
    wall, rss = _num(q.get("wall_s")), _num(q.get("peak_rss_mb"))
    stages = [(k, _num(v)) for k, v in _dict(q.get("stages")).items()]
    if wall is None and rss is None and not stages:
        return ""
    meta = [f"<span>Wall time: <b>{wall:.2f} s</b></span>" if wall is not None else "",
            f"<span>Peak memory (RSS): <b>{rss:,.0f} MB</b></span>" if rss is not None else ""]
    out = f'<h2>Quantizer run</h2><div class="meta">{"".join(meta)}</div>'
    if stages:
        out += _table(["Stage", "Time (s)", "Share of wall time"], [
            [_e(k), _f(s, ".3f") or _DASH, f"{100 * s / wall:.1f}%" if s is not None and wall else _DASH]
            for k, s in stages], num={1, 2})
    return out


def _versions(v: dict) -> str:
    rows = [[_e(k), f"<code>{_e(x)}</code>" if x not in (None, "") else '<span class="muted">not installed</span>']
            for k, x in v.items()]
    return f"<h2>Environment</h2>{_table(['Package', 'Version'], rows)}" if rows else ""


def _extra_tables(tables: Any) -> str:
    """Tables a stage or demo adds: {"title", "header": [...], "rows": [[...]], "caption"}."""
    out = []
    for t in _dicts(tables):
        # a cell without spaces (a layer name) may wrap at its separators; prose wraps at spaces
        rows = [[_e(c) if " " in str(c) else _name(c) for c in r] for r in (t.get("rows") or [])
                if isinstance(r, (list, tuple))]
        header = [_e(h) for h in (t.get("header") or [])]
        if rows and header:
            cap = f'<p class="muted">{_e(t.get("caption"))}</p>' if t.get("caption") else ""
            out.append(f"<h2>{_e(t.get('title') or '')}</h2>{_table(header, rows)}{cap}")
    return "".join(out)


def _analysis_charts(r: dict) -> str:
    if not any(r.get(k) for k in ("analysis", "search", "histograms", "layer_precisions")):
        return ""
    if not plots.available():
        return f"<h2>Amenability</h2>{NO_CHARTS}"
    figs = "".join(_figure(png, alt, cap) for png, alt, cap in all_charts(r))
    return f'<h2>Amenability</h2><div class="charts">{figs}</div>' if figs else ""


def _notes(notes: Any) -> str:
    items = notes if isinstance(notes, (list, tuple)) else [notes] if isinstance(notes, str) else []
    lis = "".join(f"<li>{_e(n)}</li>" for n in items if n not in (None, ""))
    return f'<h2>Notes</h2><ul class="notes">{lis}</ul>' if lis else ""


def _no_variants(r: dict) -> str:
    """An analysis measures layers, not variants: say so only where the report has nothing else."""
    if any(r.get(k) for k in ("analysis", "search", "layers", "tables", "histograms")):
        return ""
    return '<p class="muted">No variants measured.</p>'


def _analysis_summary(r: dict) -> str:
    """What `lowbit analyze` found, in a line, where the page opens (it measures no variants)."""
    a = _dict(r.get("analysis"))
    if not a:
        return ""
    metric = _e(a.get("metric") or "metric")
    ref, full, sqnr = _f(a.get("reference_metric"), ".4f"), _f(a.get("all_int8_metric"), ".4f"), \
        _f(a.get("all_int8_sqnr_db"), ".1f", " dB")
    layers = _dicts(a.get("layers"))
    worst = _e(layers[0].get("name")) if layers else None
    parts = [ref and f"FP32 {metric} {ref}", full and f"every layer INT8: {full}" + (f" (SQNR {sqnr})" if sqnr else ""),
             worst and f"most sensitive layer <code>{worst}</code>",
             _num(a.get("samples")) is not None and f"n={int(a['samples'])} samples"]
    return f'<h2>Analysis</h2><p>{_join(*parts)}</p>'


def render_html(report: dict) -> str:
    """The whole report as one HTML document (a string), with no external resources.

    >>> "<script>" in render_html({"model": {"name": "<script>x</script>"}})
    False
    """
    r = _dict(report)
    variants = _dicts(r.get("variants"))
    lowbit_version = _dict(r.get("versions")).get("lowbit")
    files = _candidates(r) is not None
    parts = [_header(r), _analysis_summary(r), _verdicts(variants) if len(variants) > 1 else "",
             (_summary(variants, files) + html_task.headline_note(r) + _charts(variants)) if variants
             else _no_variants(r), html_task.energy_assumptions(r),
             _analysis_charts(r), _extra_tables(r.get("tables")),
             _nodes(_dict(r.get("nodes"))), _layers(r.get("layers")),
             f'<div class="grid2"><div>{_quantizer(_dict(r.get("quantizer")))}</div>'
             f'<div>{_versions(_dict(r.get("versions")))}</div></div>', _notes(r.get("notes")),
             html_task.verdict_lines(r),
             f"<footer>Generated by lowbit{' ' + _e(lowbit_version) if lowbit_version else ''}"
             f"{' · schema ' + _e(r.get('schema')) if r.get('schema') else ''}.</footer>"]
    head, rest = _TEMPLATE.read_text(encoding="utf-8").split("{{title}}", 1)
    mid, tail = rest.split("{{body}}", 1)  # split, not replace: report text may contain "{{body}}"
    return head + _e(r.get("title") or _TITLE) + mid + "\n".join(p for p in parts if p) + tail
