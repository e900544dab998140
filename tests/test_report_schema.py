"""The report's typed schema (lowbit.report.schema): JSON round trips exactly, units are stated
and checked, and the renderers read reports through it."""

from __future__ import annotations

import json

import pytest

import lowbit
from lowbit.errors import ConfigError
from lowbit.report import REPORT_SCHEMA, Report, ReportData, Variant


def test_a_quantize_report_round_trips_through_the_schema(small_model_path, calib_arrays):
    r = lowbit.quantize(small_model_path, "int8-fast", calib_arrays, verify=lowbit.VerifyOptions(threads=(1,),
                                                                                                latency_runs=2))
    text = r.report.to_json()
    typed = ReportData.from_dict(json.loads(text))
    assert json.dumps(typed.to_dict(), indent=1) == text  # same keys, same order, same values
    assert typed.schema == REPORT_SCHEMA and [v.label for v in typed.variants] == ["fp32", "int8"]
    q = typed.variants[1]
    assert q.size_bytes > 0 and 0.0 <= q.parity["within_one_step"] <= 1.0
    assert "1" in q.latency_ms and q.latency_ms["1"]["median"] > 0  # milliseconds per thread count


def test_a_new_report_round_trips():
    d = ReportData(title="t", model={"name": "m", "source": "m.onnx"},
                   variants=[Variant("fp32", "fp32", 1000), Variant("int8", "int8", 300, parity={"passed": True,
                                                                                                 "within_one_step": 1.0})],
                   notes=["n"], extra={"search": {"metric": "top1-agreement"}})
    back = ReportData.from_dict(json.loads(json.dumps(d.to_dict())))
    assert back == d and back.extra["search"]["metric"] == "top1-agreement"


@pytest.mark.parametrize("bad, field", [
    ({"variants": [{"label": "q", "fidelity": {"top1_agreement": 97.0}}]}, "variants[0].fidelity.top1_agreement"),
    ({"variants": [{"label": "q", "parity": {"within_one_step": -0.1}}]}, "variants[0].parity.within_one_step"),
    ({"variants": [{"precision": "int8"}]}, "variants[0].label"),
    ({"variants": {"label": "q"}}, "variants"),
    ({"schema": "lowbit.report/0"}, "lowbit.report/0"),
])
def test_a_report_that_breaks_the_schema_is_refused_by_name(bad, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        ReportData.from_dict(bad)


def test_renderers_read_the_typed_report():
    r = Report({"title": "t", "variants": [{"label": "fp32", "precision": "fp32", "size_bytes": 2_000_000},
                                           {"label": "int8", "precision": "int8", "size_bytes": 500_000,
                                            "accuracy": {"top1": 0.75}, "parity": {"passed": True,
                                                                                   "within_one_step": 0.999}}]})
    header, rows = r.rows()
    assert rows[1][:3] == ["int8", "0.50", "25.0%"] and rows[1][-1] == "pass 99.90%"
    assert "75.00%" in r.to_html()  # a rate is a fraction: 0.75 is 75%, never guessed
    bad = Report({"variants": [{"label": "q", "accuracy": {"top1": 75.0}}]})
    with pytest.raises(ConfigError, match="fraction"):
        bad.to_html()
