"""Charts of the amenability analysis and the precision search, as base64 PNG strings: the
sensitivity ranking, Pareto fronts, activation histograms with the clipping range, and the
precision chosen for each layer along the network."""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.report.plots import PALETTE, _axes, _encode, _figure, _labels, _number, short_name

PRECISION_COLORS = {"int8": "#2f6fb3", "int8-block": "#3f9a8f", "w8": "#7a5fb0", "fp16": "#e07b39", "fp32": "#c94f4f", "folded": "#cccccc"}


def _value(x: Any) -> str:
    """A number for a caption: 4 significant digits, not float64's 17."""
    n = _number(x)
    return "?" if n is None else f"{n:.4g}"


def _range(r: Any) -> str:
    return f"[{', '.join(_value(v) for v in r)}]" if isinstance(r, (list, tuple)) and r else "not recorded"


def sensitivity_chart(layers: list[dict], top: int = 25, metric: str = "metric") -> str | None:
    """Horizontal bars: the metric with only this layer quantized, most sensitive on top."""
    rows = [(str(l.get("name")), _number(l.get("only_this_metric")), _number(l.get("all_but_this_metric")))
            for l in layers[:top] if _number(l.get("only_this_metric")) is not None]
    if not rows:
        return None
    fig = _figure(8, 0.28 * len(rows) + 1.2)
    ax = _axes(fig, "x")
    y = np.arange(len(rows))[::-1]
    ax.barh(y + 0.2, [r[1] for r in rows], height=0.4, color=PALETTE[0], label="only this layer INT8")
    alls = [r[2] if r[2] is not None else np.nan for r in rows]
    ax.barh(y - 0.2, alls, height=0.4, color=PALETTE[1], label="all but this layer INT8")
    labels, note = _labels([r[0] for r in rows], 44)
    ax.set_yticks(y, labels, fontsize=7)
    vals = [v for r in rows for v in r[1:] if v is not None]
    lo, hi = min(vals), max(vals)
    ax.set_xlim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.02 * (hi - lo + 1e-9))
    ax.set_xlabel(f"{metric} (higher is better)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Per-layer sensitivity (most sensitive on top)" + note, fontsize=10)
    return _encode(fig)


def pareto_chart(candidates: list[dict], pareto: list[dict], chosen: dict, floor: float, x: str,
                 metric: str = "metric") -> str | None:
    """Metric against size ('size_bytes') or estimated latency ('latency_ms') of every mix tried."""
    pts = [(c.get(x), c.get("metric")) for c in candidates if _number(c.get(x)) is not None
           and _number(c.get("metric")) is not None]
    if not pts:
        return None
    scale = 1e6 if x == "size_bytes" else 1.0
    fig = _figure(5.5, 3.6)
    ax = _axes(fig, "both")
    ax.scatter([p[0] / scale for p in pts], [p[1] for p in pts], s=14, color=PALETTE[0], alpha=0.5, label="tried")
    # the front in this plane: no other point is both smaller on x and at least as good
    front = []
    for px, py in sorted((p[0] / scale, p[1]) for p in pts):
        if not front or py > front[-1][1]:
            front.append((px, py))
    if front:
        ax.plot([f[0] for f in front], [f[1] for f in front], "-o", color=PALETTE[1], ms=4, label="Pareto front")
    if _number(chosen.get(x)) is not None:
        ax.scatter([chosen[x] / scale], [chosen["metric"]], s=80, marker="*", color=PALETTE[2], zorder=5,
                   label="chosen")
    if _number(floor) is not None:
        ax.axhline(floor, color="#c94f4f", ls="--", lw=1, label="budget floor")
    ax.set_xlabel("weights MB" if x == "size_bytes" else "estimated latency ms (sum of measured layers)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    return _encode(fig)


def histogram_chart(h: dict) -> str | None:
    counts, edges = h.get("counts") or [], h.get("edges") or []
    if not counts or len(edges) != len(counts) + 1:
        return None
    fig = _figure(5.5, 2.6)
    ax = _axes(fig, "y")
    e = np.asarray(edges, float)
    ax.bar(e[:-1], np.asarray(counts, float) + 1, width=np.diff(e), align="edge", color=PALETTE[0])
    ax.set_yscale("log")
    clip = h.get("clip") or []
    for v in clip:
        ax.axvline(float(v), color="#c94f4f", ls="--", lw=1.2)
    ax.set_title(f"{short_name(str(h.get('layer')), 48)}: input histogram, clipping range dashed", fontsize=8)
    ax.set_xlabel("activation value")
    return _encode(fig)


def precision_strip(nodes: list[dict]) -> str | None:
    """One coloured cell per layer in graph order: the precision each layer runs in."""
    cells = [(str(n.get("name")), str(n.get("precision"))) for n in nodes]
    if not cells:
        return None
    fig = _figure(9, 1.3)
    ax = fig.add_axes([0.02, 0.35, 0.96, 0.45])
    for i, (_, p) in enumerate(cells):
        ax.add_patch(__import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
            (i, 0), 1, 1, color=PRECISION_COLORS.get(p, "#888888")))
    ax.set_xlim(0, len(cells))
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel("layers in graph order (input -> output)", fontsize=8)
    handles = [__import__("matplotlib.patches", fromlist=["Patch"]).Patch(color=c, label=k)
               for k, c in PRECISION_COLORS.items() if any(p == k for _, p in cells)]
    ax.legend(handles=handles, fontsize=7, ncol=len(handles), loc="upper center", bbox_to_anchor=(0.5, 1.9),
              frameon=False)
    return _encode(fig)


def all_charts(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(png, alt, caption) for every analysis / search chart the report has data for."""
    out = []
    analysis = report.get("analysis") or {}
    search = report.get("search") or {}
    metric = str(analysis.get("metric") or search.get("metric") or "metric")
    if analysis.get("layers"):
        png = sensitivity_chart(analysis["layers"], metric=metric)
        if png:
            out.append((png, "per-layer sensitivity", f"{metric} with only this layer in INT8 (blue) and with all "
                        "but this layer in INT8 (orange)."))
    if search.get("candidates"):
        for x in ("size_bytes", "latency_ms"):
            png = pareto_chart(search["candidates"], search.get("pareto", []), search.get("chosen", {}),
                               search.get("floor"), x, metric=metric)
            if png:
                out.append((png, f"Pareto: {metric} vs {'size' if x == 'size_bytes' else 'latency'}",
                        "Every precision mix the search evaluated."))
    for h in report.get("histograms") or []:
        png = histogram_chart(h)
        if png:
            out.append((png, f"input histogram of {h.get('layer')}",
                        f"{h.get('layer')}: observed range {_range(h.get('observed'))}, clipped to "
                        f"{_range(h.get('clip'))}."))
    nodes = report.get("layer_precisions")
    if nodes:
        png = precision_strip(nodes)
        if png:
            out.append((png, "precision per layer", "The precision each layer runs in, along the network."))
    return out
