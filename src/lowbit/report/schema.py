"""The report's schema (`lowbit.report/1`), typed: what each field holds and in which unit.

A report is JSON (`Report.to_json`, `lowbit quantize --report-json`) that people and scripts read,
so its keys stay what they were; these dataclasses say what they mean and check a report when it
is read. The renderers (plain text and the CLI's rich table through `Report.rows`, the HTML page)
read a report through `ReportData.from_dict`.

Units: sizes in bytes, latencies in milliseconds, energy in microjoules, SQNR in dB; every rate
(top-1 agreement and accuracy, parity's share within one step) is a fraction in [0, 1].
Fields this module does not name are kept as they are, in `extra`, and written back in place.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from lowbit.errors import ConfigError

REPORT_SCHEMA = "lowbit.report/1"


def _fraction(where: str, x: Any) -> float | None:
    """A rate as the schema states it: a fraction in [0, 1] (None where not measured)."""
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not (0.0 <= x <= 1.0 or math.isnan(x)):
        raise ConfigError(f"report field {where} is {x!r}: a rate in a lowbit.report/1 report is a fraction "
                          "from 0 to 1 (0.97, not 97).")
    return float(x)


def _split(cls, d: Any, where: str) -> tuple[dict, dict]:
    """(the fields `cls` names, everything else) of a JSON object."""
    if not isinstance(d, dict):
        raise ConfigError(f"report field {where} is {type(d).__name__}: an object is expected.")
    names = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in names}


def _join(obj: Any, extra: dict, order: list[str]) -> dict:
    """The JSON object: fields and extras in the order the report had them. A field the report did
    not have is written only where it differs from its default (all of them for a new report)."""
    known = {}
    for f in fields(obj):
        if f.name in ("extra", "_order"):
            continue
        value = getattr(obj, f.name)
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if not order or f.name in order or value != default:
            known[f.name] = value
    out = {}
    for k in order:
        if k in known:
            out[k] = known[k]
        elif k in extra:
            out[k] = extra[k]
    out.update({k: v for k, v in known.items() if k not in out})
    out.update({k: v for k, v in extra.items() if k not in out})
    return out


@dataclass
class Variant:
    """One model compared: the reference (FP32, first) or a candidate."""

    label: str
    precision: str | None = None
    size_bytes: int | None = None
    # thread count (a string in JSON) -> {"median", "p10", "p90", ...} in milliseconds, batch 1
    latency_ms: dict[str, dict] = field(default_factory=dict)
    # vs the reference on the evaluation data: samples, sqnr_db, cosine, top1_agreement (fraction), kl
    fidelity: dict | None = None
    # top-1 accuracy against labels: {"top1": fraction, "n": samples}
    accuracy: dict | None = None
    # ONNX Runtime vs lowbit's simulation: {"passed": bool, "within_one_step": fraction, ...}
    parity: dict | None = None
    energy_uj: float | None = None  # estimated per inference (lowbit.verify.energy)
    extra: dict = field(default_factory=dict)  # task metrics, kernel check, ... as recorded
    _order: list[str] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Any, where: str = "variants[?]") -> "Variant":
        known, extra = _split(cls, d, where)
        if not isinstance(known.get("label"), str):
            raise ConfigError(f"report field {where}.label is {known.get('label')!r}: a variant needs a label.")
        v = cls(**{k: val for k, val in known.items() if not k.startswith("_")}, extra=extra, _order=list(d))
        for key, rate in (("fidelity", "top1_agreement"), ("accuracy", "top1"), ("parity", "within_one_step")):
            part = getattr(v, key)
            if isinstance(part, dict):
                _fraction(f"{where}.{key}.{rate}", part.get(rate))
        return v

    def to_dict(self) -> dict:
        return _join(self, self.extra, self._order)


@dataclass
class ReportData:
    """A whole report: what was compared, how it was made, and the notes that qualify it."""

    schema: str = REPORT_SCHEMA
    title: str = "lowbit report"
    model: dict = field(default_factory=dict)  # {"name", "source"}
    precision: str | None = None
    created: str | None = None  # local time, "%Y-%m-%d %H:%M:%S"
    output_path: str | None = None
    versions: dict = field(default_factory=dict)  # package -> version, for reproducibility
    variants: list[Variant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # {"quantized": [...], "skipped": [{"name", "op", "reason"}], "folded": [...]}
    nodes: dict | None = None
    # the quantize call itself: {"wall_s", "peak_rss_mb", "stages": {stage: seconds}}
    quantizer: dict | None = None
    extra: dict = field(default_factory=dict)  # search, budget, analysis, tables, verdict, ... as recorded
    _order: list[str] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Any) -> "ReportData":
        """The typed report of a `lowbit.report/1` dict; a ConfigError names a field that breaks it."""
        known, extra = _split(cls, d, "(top level)")
        schema = known.get("schema", REPORT_SCHEMA)
        if schema != REPORT_SCHEMA:
            raise ConfigError(f"report schema is {schema!r}; this lowbit reads {REPORT_SCHEMA!r} reports.")
        variants = known.pop("variants", []) or []
        if not isinstance(variants, list):
            raise ConfigError(f"report field variants is {type(variants).__name__}: a list is expected.")
        notes = known.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ConfigError("report field notes must be a list of strings.")
        return cls(**{k: v for k, v in known.items() if not k.startswith("_")},
                   variants=[Variant.from_dict(v, f"variants[{i}]") for i, v in enumerate(variants)],
                   extra=extra, _order=list(d))

    def to_dict(self) -> dict:
        out = _join(self, self.extra, self._order)
        if "variants" in out:
            out["variants"] = [v.to_dict() for v in self.variants]
        return out
