"""Charts for the HTML report, each returned as a base64-encoded PNG string.

Every function takes plain report data (the ``lowbit.report/1`` dict's pieces), returns ``None``
when there is nothing to draw, and never touches pyplot's global state: figures are built on an
Agg canvas and released when the function returns, so the output is deterministic and thread-safe.
matplotlib is optional (`lowbit[report]`): without it `available()` is False and the HTML report
leaves the charts out, saying so.

>>> png = size_chart([{"label": "FP32", "size_bytes": 14_000_000}])
>>> png.startswith("iVBOR")
True
"""

from __future__ import annotations

import base64
import io
import math
import os
from typing import TYPE_CHECKING, Any

from lowbit.extras import available as _available
from lowbit.extras import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
REFERENCE_COLOR = "#9aa5b1"
PALETTE = ["#2f6fb3", "#e07b39", "#3a9d5d", "#8e5ab5", "#c94f4f", "#4fa3b8", "#b59a3a"]


def _number(x: Any) -> float | None:
    """``x`` as a finite float, or None (bools, strings, NaN and inf are not numbers here)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def available() -> bool:
    """Whether charts can be drawn (matplotlib installed: `pip install 'lowbit[report]'`)."""
    return _available("matplotlib")


def _figure(width: float, height: float) -> Figure:
    agg = require("matplotlib.backends.backend_agg", "the HTML report's charts")
    fig = require("matplotlib.figure", "the HTML report's charts").Figure(figsize=(width, height), dpi=DPI)
    agg.FigureCanvasAgg(fig)
    return fig


def _encode(fig: Figure) -> str:
    buf = io.BytesIO()
    # metadata={"Software": None} drops the version stamp so identical data gives identical bytes
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    fig.clear()
    return base64.b64encode(buf.getvalue()).decode("ascii")


def short_name(name: str, width: int = 40) -> str:
    """`name` in at most `width` characters, cut in the middle: a layer's path start and its op both
    stay readable ('/model.22/cv3.2/…/conv/Conv'), where cutting the start left only the op.

    >>> short_name("/model.22/cv3.2/cv3.2.0/cv3.2.0.0/conv/Conv", 30)
    '/model.22/…cv3.2.0.0/conv/Conv'
    """
    if len(name) <= width:
        return name
    head = width // 3
    return name[:head] + "…" + name[len(name) - (width - head - 1):]


def common_prefix(names: list[str]) -> str:
    """The path prefix every name shares, up to a separator ('/', '_', '.'), if long enough to be worth
    dropping from chart labels (exporters prefix every node: 'jax2tf_get_logits_/pjit_get_logits_/').

    >>> common_prefix(["model/block_1/conv", "model/block_2/conv"])
    'model/'
    """
    if len(names) < 2:
        return ""
    shared = os.path.commonprefix(names)
    # a path separator where there is one ('block_' would leave '1/conv' and '2/conv')
    cut = (shared.rfind("/") if "/" in shared else max(shared.rfind(c) for c in "_.")) + 1
    return shared[:cut] if cut >= 6 and all(len(n) > cut for n in names) else ""


def _labels(names: list[str], width: int) -> tuple[list[str], str]:
    """Chart labels for `names` (their shared prefix dropped, the rest cut in the middle) and a note
    naming the dropped prefix ('' if none)."""
    prefix = common_prefix(names)
    note = f" (names after '{short_name(prefix, 40)}')" if prefix else ""
    return [short_name(n[len(prefix):], width) for n in names], note


def _colors(n: int) -> list[str]:
    """The reference (first variant) in grey, the rest from the palette."""
    return [REFERENCE_COLOR] + [PALETTE[i % len(PALETTE)] for i in range(max(n - 1, 0))]


def _thread_key(k: str) -> tuple[int, float, str]:
    """Numeric thread counts in numeric order ("2" before "16"), anything else after, by name."""
    try:
        return (0, float(k), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(k))


def _axes(fig: Figure, grid: str = "x"):
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(axis=grid, color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)
    return ax


def size_chart(variants: list[dict]) -> str | None:
    """Horizontal bars: size on disk in MB per variant, annotated with MB and % of the first."""
    rows = [(str(v.get("label") or f"variant {i}"), _number(v.get("size_bytes")))
            for i, v in enumerate(variants)]
    if not any(s is not None for _, s in rows):
        return None
    labels = [r[0] for r in rows]
    mb = [(s or 0.0) / 1e6 for _, s in rows]
    ref = mb[0] if rows[0][1] else None
    fig = _figure(6.0, 0.45 * len(rows) + 1.0)
    ax = _axes(fig)
    y = list(range(len(rows)))
    ax.barh(y, mb, color=_colors(len(rows)), height=0.6)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("size on disk (MB)")
    ax.set_title("Model size", loc="left", fontsize=10, fontweight="bold")
    top = max(mb) or 1.0
    ax.set_xlim(0, top * 1.3)
    for yi, m, (_, s) in zip(y, mb, rows):
        text = "n/a" if s is None else f"{m:.2f} MB" + (f"  ({100 * m / ref:.0f}%)" if ref else "")
        ax.text(m + top * 0.01, yi, text, va="center", fontsize=8)
    return _encode(fig)


def latency_chart(variants: list[dict]) -> str | None:
    """Grouped bars: median latency per thread count (groups) and variant (bars), p10-p90 whiskers."""
    threads: list[str] = []
    for v in variants:
        lat = v.get("latency_ms")
        for k, s in (lat.items() if isinstance(lat, dict) else []):
            if isinstance(s, dict) and _number(s.get("median")) is not None and str(k) not in threads:
                threads.append(str(k))
    if not threads:
        return None
    threads.sort(key=_thread_key)
    n = len(variants)
    width = 0.8 / max(n, 3)  # a lone variant keeps a bar width that looks like a bar, not a wall
    fig = _figure(min(max(4.5, 1.2 + 0.5 * n * len(threads)), 9.0), 3.2)
    ax = _axes(fig, grid="y")
    for i, (v, color) in enumerate(zip(variants, _colors(n))):
        lat = v.get("latency_ms") if isinstance(v.get("latency_ms"), dict) else {}
        lat = {str(k): s for k, s in lat.items()}
        xs, med, lo, hi = [], [], [], []
        for t_i, t in enumerate(threads):
            s = lat.get(t) if isinstance(lat.get(t), dict) else {}
            m = _number(s.get("median"))
            if m is None:
                continue
            p10, p90 = _number(s.get("p10")), _number(s.get("p90"))
            xs.append(t_i + width * (i + 0.5 - n / 2))
            med.append(m)
            lo.append(max(m - p10, 0.0) if p10 is not None else 0.0)
            hi.append(max(p90 - m, 0.0) if p90 is not None else 0.0)
        if xs:
            ax.bar(xs, med, width=width * 0.9, color=color, label=str(v.get("label") or f"variant {i}"),
                   yerr=[lo, hi] if any(lo + hi) else None, capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333"})
    ax.set_xticks(range(len(threads)), [f"{t} thread{'s' if t != '1' else ''}" for t in threads])
    ax.set_xlim(-0.5, len(threads) - 0.5)
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency", loc="left", fontsize=10, fontweight="bold")
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    ax.margins(y=0.15)
    return _encode(fig)


def layer_sqnr_chart(layers: list[dict]) -> str | None:
    """Horizontal bars of per-layer SQNR (dB) in graph order; red below 20 dB, amber below 30 dB."""
    rows = [(str(l.get("name") or "?"), _number(l.get("sqnr_db"))) for l in layers if isinstance(l, dict)]
    rows = [(name, s) for name, s in rows if s is not None]
    if not rows:
        return None
    names, note = _labels([n for n, _ in rows], 40)
    vals = [s for _, s in rows]
    colors = ["#c94f4f" if s < 20 else "#e0a339" if s < 30 else "#3a9d5d" for s in vals]
    fig = _figure(5.5, min(0.2 * len(rows) + 1.0, 40.0))
    ax = _axes(fig)
    y = list(range(len(rows)))
    ax.barh(y, vals, color=colors, height=0.7)
    ax.set_yticks(y, names, fontsize=7 if len(rows) > 30 else 8)
    ax.invert_yaxis()
    for ref in (20, 30):
        ax.axvline(ref, color="#888", linewidth=0.7, linestyle="--")
    ax.set_xlabel("SQNR (dB, higher is better)")
    ax.set_title("Per-layer SQNR" + note, loc="left", fontsize=10, fontweight="bold")
    return _encode(fig)
