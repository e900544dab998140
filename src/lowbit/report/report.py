"""The Report: one plain dict (schema lowbit.report/1) with renderers around it."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

from lowbit import __version__
from lowbit.io import atomic_write_text

REPORT_SCHEMA = "lowbit.report/1"


def versions() -> dict[str, str | None]:
    """Versions of everything that decides the numbers, for the report and for reproducibility."""
    import numpy
    import onnx
    import onnxruntime

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover
        torch_version = None
    return {"lowbit": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "torch": torch_version, "python": platform.python_version()}


def _fmt(v, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


@dataclass
class Report:
    """Accuracy, size, latency and parity of FP32 vs each quantized variant.

    >>> print(result.report)            # plain-text summary
    >>> result.report.save_html("report.html"); result.report.save_json("report.json")
    """

    data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data.setdefault("schema", REPORT_SCHEMA)
        self.data.setdefault("versions", versions())
        self.data.setdefault("variants", [])
        self.data.setdefault("notes", [])

    # --- access --------------------------------------------------------------------------
    @property
    def variants(self) -> list[dict]:
        return self.data["variants"]

    def variant(self, label: str) -> dict:
        for v in self.variants:
            if v["label"] == label:
                return v
        raise KeyError(label)

    @property
    def skipped(self) -> list[dict]:
        return self.data.get("nodes", {}).get("skipped", [])

    # --- renderers -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return self.data

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, default=_json_default)

    def to_html(self) -> str:
        from lowbit.report.html import render_html

        return render_html(json.loads(self.to_json()))

    def save_json(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    def save_html(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_html())

    def rows(self) -> tuple[list[str], list[list[str]]]:
        """The summary table: a header and one row per variant (shared by text and rich output)."""
        ref = self.variants[0] if self.variants else {}
        ref_size = ref.get("size_bytes") or 0
        threads = sorted({t for v in self.variants for t in (v.get("latency_ms") or {})}, key=int)
        header = ["variant", "size MB", "% of FP32"] + [f"{t}-thread ms (speed-up)" for t in threads] + [
            "top-1 agree", "SQNR dB", "cosine", "KL", "top-1 acc", "energy uJ (est.)", "parity"]
        rows = []
        for v in self.variants:
            size = v.get("size_bytes") or 0
            row = [v["label"], f"{size / 1e6:.2f}", f"{100 * size / ref_size:.1f}%" if ref_size else "-"]
            for t in threads:
                lat = (v.get("latency_ms") or {}).get(t)
                base = (ref.get("latency_ms") or {}).get(t)
                if lat:
                    speed = f" ({base['median'] / lat['median']:.2f}x)" if base else ""
                    row.append(f"{lat['median']:.2f}{speed}")
                else:
                    row.append("-")
            f = v.get("fidelity") or {}
            acc = v.get("accuracy") or {}
            par = v.get("parity")
            row += [_fmt(f.get("top1_agreement"), ".3f"), _fmt(f.get("sqnr_db"), ".1f"), _fmt(f.get("cosine"), ".5f"),
                    _fmt(f.get("kl"), ".4f"), _fmt(acc.get("top1"), ".3f"),
                    _fmt(v.get("energy_uj"), ".0f"),
                    "-" if not par else f"{'pass' if par['passed'] else 'FAIL'} {100 * par['within_one_step']:.2f}%"]
            rows.append(row)
        return header, rows

    def __str__(self) -> str:
        header, rows = self.rows()
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines = [self.data.get("title", "lowbit report")]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        skipped = self.skipped
        if skipped:
            lines.append(f"{len(skipped)} node(s) kept in float; first: "
                         + "; ".join(f"{s['name']} ({s['reason']})" for s in skipped[:3]))
        for v in self.variants:
            k = v.get("kernels") or {}
            if k.get("unfused"):
                lines.append(f"{v['label']}: {len(k['unfused'])} layer(s) planned INT8 run as float islands in ONNX "
                             "Runtime; first: " + ", ".join(u["node"] for u in k["unfused"][:3]))
        lines += self.data.get("notes", [])
        return "\n".join(lines)


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
