"""The Report: one plain dict (schema lowbit.report/1) with renderers around it."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from lowbit.io import atomic_write_text
from lowbit.package import __version__
from lowbit.report.html import render_html
from lowbit.report.schema import REPORT_SCHEMA, ReportData, Variant
from lowbit.report.verdict import verdicts


def versions() -> dict[str, str | None]:
    """Versions of everything that decides the numbers, for the report and for reproducibility."""
    try:  # read from the installed metadata: importing torch costs seconds, and it is optional
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = None
    return {"lowbit": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "torch": torch_version, "python": platform.python_version()}


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
    def verdicts(self) -> list[dict]:
        """One line per variant: size, speed, headline metric with n and interval, parity, status
        (`lowbit.report.verdict`); kept in the dict as 'verdict' whenever it is rendered."""
        self.data["verdict"] = verdicts(self.data)
        return self.data["verdict"]

    def to_dict(self) -> dict:
        self.verdicts()
        return self.data

    def to_json(self) -> str:
        self.verdicts()
        return json.dumps(self.data, indent=1, default=_json_default)

    def typed(self) -> ReportData:
        """The report as its schema types it (`lowbit.report.schema`), as the renderers read it."""
        return ReportData.from_dict(json.loads(self.to_json()))

    def to_html(self) -> str:
        return render_html(self.typed().to_dict())

    def save_json(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    def save_html(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_html())

    def rows(self) -> tuple[list[str], list[list[str]]]:
        """The summary table: a header and one row per variant (shared by text and rich output)."""
        variants = self.typed().variants
        ref = variants[0] if variants else Variant("-")
        ref_size = ref.size_bytes or 0
        threads = sorted({t for v in variants for t in v.latency_ms}, key=int)
        header = ["variant", "size MB", "% of FP32"] + [f"{t}-thread ms [p10-p90] (speed-up)" for t in threads]
        names = metric_columns(self.variants)
        if names:  # task metrics: each with its interval; the sample counts go in the header
            header += [f"{n} (n={c})" if c is not None else n for n, c in names]
        else:  # a report made before task metrics (or by hand): the pooled fidelity figures
            header += ["top-1 agree", "SQNR dB", "cosine", "KL"]
        header += ["top-1 acc", "energy uJ (est.)", "parity"]
        rows = []
        for v in variants:
            size = v.size_bytes or 0
            row = [v.label, f"{size / 1e6:.2f}", f"{100 * size / ref_size:.1f}%" if ref_size else "-"]
            for t in threads:
                lat = v.latency_ms.get(t)
                base = ref.latency_ms.get(t)
                if lat:
                    speed = f" ({base['median'] / lat['median']:.2f}x)" if base else ""
                    spread = f" [{lat['p10']:.2f}-{lat['p90']:.2f}]" if "p10" in lat and "p90" in lat else ""
                    row.append(f"{lat['median']:.2f}{spread}{speed}")
                else:
                    row.append("-")
            f = v.fidelity or {}
            acc = v.accuracy or {}
            par = v.parity
            if names:
                got = {(m["name"], tuple(m.get("outputs") or ())): m for m in v.extra.get("metrics") or []}
                row += [metric_cell(got.get(key)) for key in metric_keys(self.variants)]
            else:
                row += [_fmt(f.get("top1_agreement"), ".3f"), _fmt(f.get("sqnr_db"), ".1f"),
                        _fmt(f.get("cosine"), ".5f"), _fmt(f.get("kl"), ".4f")]
            row += [_fmt(acc.get("top1"), ".3f"), _fmt(v.energy_uj, ".0f"),
                    "-" if not par else f"{'pass' if par['passed'] else 'FAIL'} {100 * par['within_one_step']:.2f}%"]
            rows.append(row)
        # a column no variant has a value for does not apply to this model (a detector's top-1 acc)
        keep = [i for i in range(len(header)) if i < 3 or any(r[i] != "-" for r in rows)] if rows else []
        if keep:
            header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
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
        lines += [v["text"] for v in self.verdicts()]
        return "\n".join(lines)


def metric_keys(variants: list[dict]) -> list[tuple[str, tuple[str, ...]]]:
    """(name, outputs) of every metric any variant has, in first-seen order (headline first)."""
    keys: list[tuple[str, tuple[str, ...]]] = []
    for v in variants[1:] + variants[:1]:
        for m in v.get("metrics") or []:
            k = (m["name"], tuple(m.get("outputs") or ()))
            if k not in keys:
                keys.append(k)
    return keys


def metric_columns(variants: list[dict]) -> list[tuple[str, int | None]]:
    """Column titles: the metric (with its output where several outputs have one) and its n."""
    keys = metric_keys(variants)
    names = [k[0] for k in keys]
    out = []
    for name, outputs in keys:
        ns = {m.get("n") for v in variants for m in v.get("metrics") or []
              if (m["name"], tuple(m.get("outputs") or ())) == (name, outputs)}
        title = f"{name}[{'+'.join(outputs)}]" if names.count(name) > 1 else name
        out.append((title, ns.pop() if len(ns) == 1 else None))
    return out


def metric_cell(m: dict | None) -> str:
    """'0.940 [0.910-0.960]'; '-' where the metric does not apply to this variant."""
    if m is None:
        return "-"
    v = m.get("value")
    if v is None:
        return "undefined"
    text = f"{v:.1f}" if m["name"] == "sqnr" else f"{v:.4f}"
    lo, hi = m.get("ci_low"), m.get("ci_high")
    return text + (f" [{lo:.3f}-{hi:.3f}]" if lo is not None and hi is not None else "")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
