"""Metrics that do not apply to a model are not shown: the terminal table keeps a column only where
some variant has a value; `lowbit eval`'s HTML names its candidates as files, not as a precision."""

from __future__ import annotations

from lowbit.cli.render import compact_table
from lowbit.report import Report
from lowbit.report.html import render_html


def _variant(label, metric=None, top1=None, parity=None):
    return {"label": label, "precision": label, "size_bytes": 4_000_000 if label == "fp32" else 1_000_000,
            "latency_ms": {"1": {"median": 2.0, "p10": 1.9, "p90": 2.1}}, "energy_uj": None,
            "metrics": [metric] if metric else [], "accuracy": {"top1": top1, "n": 20} if top1 else None,
            "parity": parity}


F1 = {"name": "detection-yolo", "value": 0.94, "n": 99, "ci_low": 0.91, "ci_high": 0.96}
PASS = {"passed": True, "within_one_step": 0.999}


def test_detector_table_has_no_accuracy_or_energy_column():
    report = Report({"variants": [_variant("fp32", dict(F1, value=1.0)), _variant("int8", F1, parity=PASS)]})
    header, rows = compact_table(report)
    assert header == ["variant", "size MB (% FP32)", "1-thread ms", "detection-yolo (n=99)", "parity"]
    assert rows[1][3] == "0.9400 [0.910-0.960]" and rows[1][4].startswith("pass")


def test_classifier_table_keeps_accuracy_and_drops_an_all_empty_parity():
    top1 = {"name": "top1-agreement", "value": 0.98, "n": 20}
    report = Report({"variants": [_variant("fp32", dict(top1, value=1.0), top1=0.9),
                                  _variant("int8.onnx", top1, top1=0.85)]})
    header, rows = compact_table(report)
    assert header[-1] == "top-1 acc" and "parity" not in header
    assert [r[-1] for r in rows] == ["0.900", "0.850"]


def test_eval_html_names_candidates_by_file():
    variants = [_variant("fp32"), _variant("fp16.onnx"), _variant("int8.onnx")]
    page = render_html({"title": "lowbit eval: m", "precision": "fp16.onnx, int8.onnx", "variants": variants})
    assert "Candidates: <b>fp16.onnx, int8.onnx</b>" in page
    assert "Precision:" not in page and '<th scope="row">Precision</th>' not in page
    quantized = render_html({"title": "lowbit: m -> int8", "precision": "int8", "nodes": {},
                             "variants": [_variant("fp32"), _variant("int8")]})
    assert "Precision: <b>int8</b>" in quantized and '<th scope="row">Precision</th>' in quantized


def test_printed_report_drops_columns_that_do_not_apply():
    """`print(report)` in Python shows the same columns as the terminal table: none all '-'."""
    report = Report({"variants": [_variant("fp32", dict(F1, value=1.0)), _variant("int8", F1, parity=PASS)]})
    header, rows = report.rows()
    assert "top-1 acc" not in header and "energy uJ (est.)" not in header
    assert header[-2:] == ["detection-yolo (n=99)", "parity"] and rows[1][-1].startswith("pass")
    assert "top-1 acc" not in str(report)
