"""The line every report ends with, one per variant:

    int8: 3.7x smaller, 2.4x faster (2 threads), detection-yolo 0.940 (n=99, 95% CI 0.910-0.960), parity pass — OK

Status, worst first: FAIL (an output all zeros or non-finite where FP32's is not, or parity
failed), BELOW BUDGET (the accuracy budget was missed on held-out data), LOW (no budget given and
the headline metric is below a sane floor: under 0.90 for a 0-1 score where higher is better,
over 0.10 for an error rate, under 20 dB SQNR), OK (budget met, or nothing flagged).
"""

from __future__ import annotations

from typing import Any

LOW_SCORE, HIGH_ERROR, LOW_SQNR_DB = 0.90, 0.10, 20.0


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def metric_parts(m: dict, digits: int = 3, db_digits: int = 1, dash: str = "-") -> tuple[str, list[str]]:
    """A metric result as (value text, [sample count, interval, undefined count]): 'undefined'
    where no value exists; SQNR in dB. Shared by the verdict line and the HTML table."""
    value, lo, hi = _num(m.get("value")), _num(m.get("ci_low")), _num(m.get("ci_high"))
    if value is None:
        val = "undefined"
    elif m.get("name") == "sqnr":
        val = f"{value:.{db_digits}f} dB"
    else:
        val = f"{value:.{digits}f}"
    extra = [f"n={int(m.get('n') or 0):,}"]
    if lo is not None and hi is not None:
        extra.append(f"95% CI {lo:.3f}{dash}{hi:.3f}")
    if m.get("undefined"):
        extra.append(f"{int(m['undefined'])} undefined")
    return val, extra


def metric_text(m: dict) -> str:
    """'detection-yolo 0.940 (n=99, 95% CI 0.910-0.960)'; 'cosine undefined (n=0, ...)'."""
    val, extra = metric_parts(m)
    return f"{m.get('name')} {val} ({', '.join(extra)})"


def _low(m: dict) -> bool:
    v = _num(m.get("value"))
    if v is None:
        return True
    if m.get("name") == "sqnr":
        return v < LOW_SQNR_DB
    if m.get("higher_is_better", True):
        return v <= 1.0 and v < LOW_SCORE
    return v > HIGH_ERROR


def _speed(ref: dict, v: dict) -> str | None:
    lat_r, lat_v = ref.get("latency_ms") or {}, v.get("latency_ms") or {}
    common = sorted(set(map(str, lat_r)) & set(map(str, lat_v)), key=lambda t: (not t.isdigit(), int(t) if t.isdigit() else 0))
    if not common:
        return None
    t = common[-1]
    r = {str(k): s for k, s in lat_r.items()}[t].get("median")
    c = {str(k): s for k, s in lat_v.items()}[t].get("median")
    if not r or not c:
        return None
    ratio = r / c
    word = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
    return f"{word} ({t} thread{'' if t == '1' else 's'})"


def verdicts(data: dict) -> list[dict]:
    """[{label, status, text}] for every variant after the reference (or the quantized model alone
    when nothing was verified)."""
    variants = [v for v in data.get("variants") or [] if isinstance(v, dict)]
    budget = data.get("budget") if isinstance(data.get("budget"), dict) else None
    out = []
    if not variants[1:]:
        if budget is None:
            return []
        label = str(data.get("precision") or "quantized")
        variants = [{}, {"label": label}]
    ref = variants[0]
    for v in variants[1:]:
        parts, status = [], "OK"
        size, ref_size = _num(v.get("size_bytes")), _num(ref.get("size_bytes"))
        if size and ref_size:
            parts.append(f"{ref_size / size:.1f}x smaller" if size <= ref_size else f"{size / ref_size:.2f}x larger")
        speed = _speed(ref, v)
        if speed:
            parts.append(speed)
        metrics = [m for m in v.get("metrics") or [] if isinstance(m, dict)]
        if metrics:
            parts.append(metric_text(metrics[0]))
        par = v.get("parity") if isinstance(v.get("parity"), dict) else None
        if par is not None:
            parts.append(f"parity {'pass' if par.get('passed') else 'FAIL'}")
        failures = [str(f) for f in v.get("failures") or []]
        if budget is not None and (len(variants) == 2 or budget.get("label") == v.get("label")):
            parts.append(f"budget {budget.get('metric')} >= {_num(budget.get('floor')) or 0:.4f}: held-out "
                         f"{_num(budget.get('holdout_metric')) or 0:.4f} (n={int(budget.get('holdout_samples') or 0)})")
            if not budget.get("met"):
                status = "BELOW BUDGET"
        elif metrics and _low(metrics[0]):
            status = "LOW"
        if failures or (par is not None and not par.get("passed")):
            status = "FAIL"
            parts += failures
        text = f"{v.get('label')}: {', '.join(parts) or 'not measured'} — {status}"
        out.append({"label": v.get("label"), "status": status, "text": text})
    return out
