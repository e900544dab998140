"""The HTML report's task-metric rows, energy assumptions and closing verdict lines (the page's
counterpart of `lowbit.report.verdict` and the text table's metric columns)."""

from __future__ import annotations

import html
from typing import Any, Callable

from lowbit.report.verdict import metric_parts, metric_text, verdicts


def _e(x: Any) -> str:
    return "" if x is None else html.escape(str(x), quote=True)


def has_metrics(variants: list[dict]) -> bool:
    return any(isinstance(v.get("metrics"), list) and v["metrics"] for v in variants)


def metric_rows(variants: list[dict]) -> list[tuple[str, Callable[[dict, bool], str | None]]]:
    """One summary row per metric any variant has, headline first: value, n and 95% interval; the
    row title carries the definition as a tooltip. A metric a variant lacks is left blank."""
    keys: list[tuple[str, tuple]] = []
    defs: dict[tuple[str, tuple], str] = {}
    for v in variants[1:] + variants[:1]:
        for m in v.get("metrics") or []:
            if not isinstance(m, dict):
                continue
            k = (str(m.get("name")), tuple(m.get("outputs") or ()))
            if k not in keys:
                keys.append(k)
                defs[k] = str(m.get("definition") or "")
    names = [k[0] for k in keys]
    rows = []
    for k in keys:
        def cell(v: dict, is_ref: bool, k=k) -> str | None:
            for m in v.get("metrics") or []:
                if isinstance(m, dict) and (str(m.get("name")), tuple(m.get("outputs") or ())) == k:
                    text, sub = metric_parts(m, digits=4, db_digits=2, dash="–")
                    return f"{_e(text)}<br><span class=\"sub\">{_e(' · '.join(sub))}</span>"
            return None
        title = f"{k[0]} [{'+'.join(k[1])}]" if names.count(k[0]) > 1 else k[0]
        head = " (headline)" if k == keys[0] else ""
        rows.append((f'<span title="{_e(defs[k])}">{_e(title)}{head}</span>', cell))
    return rows


def energy_assumptions(r: dict) -> str:
    items = r.get("energy_assumptions")
    if not isinstance(items, list) or not items:
        return ""
    lis = "".join(f"<li>{_e(a)}</li>" for a in items)
    return f'<h2>Energy estimate: assumptions</h2><ul class="notes">{lis}</ul>'


def headline_note(r: dict) -> str:
    m = r.get("metric")
    if not isinstance(m, dict):
        return ""
    return (f'<p class="sub">Headline metric <b>{_e(m.get("headline"))}</b> ({_e(m.get("source"))}: '
            f'{_e(m.get("reason"))}): {_e(m.get("definition"))}</p>')


def verdict_lines(r: dict) -> str:
    lines = verdicts(r)
    if not lines:
        return ""
    kind = {"OK": "ok", "LOW": "warn"}
    lis = "".join(f'<li><span class="badge {kind.get(v["status"], "bad")}">{_e(v["status"])}</span> '
                  f'{_e(v["text"])}</li>' for v in lines)
    return f'<h2>Verdict per variant</h2><ul class="notes verdict">{lis}</ul>'


def verdict_badge(m: dict) -> str:
    return metric_text(m)
