"""Contracts of the HTML report: self-contained, escaped, well-formed, and showing the numbers."""

from __future__ import annotations

import base64
import copy
import re
from html.parser import HTMLParser

import pytest

from lowbit.report import plots
from lowbit.report.html import render_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def full_report() -> dict:
    lat = lambda m, runs=50: {"median": m, "p10": m * 0.95, "p90": m * 1.08, "runs": runs}  # noqa: E731
    return {
        "schema": "lowbit.report/1",
        "title": "MobileNetV2 INT8",
        "created": "2025-06-01T12:00:00Z",
        "model": {"name": "mobilenet_v2", "source": "models/mobilenet_v2.onnx"},
        "precision": "int8",
        "output_path": "out/mbv2.int8.onnx",
        "variants": [
            {"label": "FP32", "precision": "fp32", "path": "models/mobilenet_v2.onnx", "size_bytes": 13_964_571,
             "latency_ms": {"1": lat(4.56), "4": lat(1.60)},
             "fidelity": None, "accuracy": {"top1": 0.7188, "n": 1000}, "parity": None, "energy_uj": 1510.0},
            {"label": "INT8 (QDQ)", "precision": "int8", "path": "out/mbv2.int8.onnx", "size_bytes": 3_600_000,
             "latency_ms": {"1": lat(3.00), "4": lat(1.10)},
             "fidelity": {"sqnr_db": 27.4, "cosine": 0.99843, "top1_agreement": 0.981, "kl": 0.0123, "samples": 500},
             "accuracy": {"top1": 0.7132, "n": 1000},
             "parity": {"within_one_step": 0.99987, "max_steps": 1.0, "elements": 1_000_000, "passed": True},
             "energy_uj": 402.0},
            {"label": "FP16", "precision": "fp16", "path": None, "size_bytes": 7_000_000,
             "latency_ms": {"1": lat(5.10)},
             "fidelity": {"sqnr_db": 61.0, "cosine": 0.99999, "top1_agreement": 1.0, "kl": 1e-6, "samples": 500},
             "accuracy": None, "parity": {"within_one_step": 0.91, "max_steps": 3.0, "elements": 1000, "passed": False},
             "energy_uj": None},
        ],
        "nodes": {
            "quantized": [{"name": f"/features.{i}/Conv", "op": "Conv", "precision": "int8"} for i in range(52)]
            + [{"name": "/classifier/Gemm", "op": "Gemm", "precision": "int8"},
               {"name": "/features/Add", "op": "Add", "precision": "int8"}],
            "skipped": [{"name": "/Softmax", "op": "Softmax", "reason": "output kept in float (keep_float)"},
                        {"name": "/Resize", "op": "Resize", "reason": "no int8 kernel in ONNX Runtime"}],
        },
        "quantizer": {"wall_s": 12.5, "peak_rss_mb": 812.3,
                      "stages": {"load": 0.4, "calibrate": 9.1, "transform": 1.2, "emit": 0.8, "verify": 1.0}},
        "versions": {"lowbit": "0.1.0", "onnx": "1.16.0", "onnxruntime": "1.18.0", "numpy": "1.26.4",
                     "torch": None, "python": "3.11.7"},
        "notes": ["Calibrated on 256 images (percentile 99.99).", "Energy figures are estimates (Horowitz 2014)."],
        "layers": [{"name": f"/features.{i}/Conv", "op": "Conv", "precision": "int8", "sqnr_db": 15.0 + i}
                   for i in range(20)] + [{"name": "/classifier/Gemm", "op": "Gemm", "precision": "int8",
                                           "sqnr_db": None}],
    }


def minimal_report() -> dict:
    return {"variants": [{"label": "FP32", "precision": "fp32", "size_bytes": 1_000_000}]}


class _Checker(HTMLParser):
    """Collects tags, attributes, and whether every non-void tag was closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _parse(page: str) -> _Checker:
    c = _Checker()
    c.feed(page)
    c.close()
    return c


@pytest.fixture(scope="module")
def full_page() -> str:
    return render_html(full_report())


@pytest.mark.parametrize("make", [full_report, minimal_report])
def test_renders_and_tags_balance(make):
    page = render_html(make())
    assert page.startswith("<!DOCTYPE html>")
    c = _parse(page)
    assert c.errors == [] and c.stack == []
    assert {"html", "head", "body", "table"} <= set(c.tags)


def test_no_external_resources(full_page):
    c = _parse(full_page)
    for tag, attr, value in c.attrs:
        if attr in {"src", "href"}:
            assert not re.match(r"\s*(https?:)?//", value or ""), (tag, attr, value)
    assert "http://" not in full_page and "https://" not in full_page
    assert "<script" not in full_page and "<link" not in full_page


def test_images_are_inline_pngs(full_page):
    srcs = [v for tag, attr, v in _parse(full_page).attrs if tag == "img" and attr == "src"]
    assert len(srcs) == 3  # size, latency, per-layer SQNR
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)


def test_strings_are_escaped():
    r = full_report()
    r["model"]["name"] = "<script>alert(1)</script>"
    r["title"] = 'x" onload="y {{body}}'
    r["variants"][1]["label"] = "<i>int8</i>"
    r["nodes"]["skipped"][0]["reason"] = "a < b & c"
    r["notes"] = ["<img src=x onerror=alert(1)>"]
    page = render_html(r)
    assert "<script>" not in page and "<img src=x" not in page and "<i>int8</i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &lt; b &amp; c" in page
    assert page.count("<main>") == 1 and _parse(page).errors == []


def test_numbers_appear(full_page):
    assert "1.52x" in full_page  # 4.56 ms / 3.00 ms at one thread
    assert "1.45x" in full_page  # 1.60 / 1.10 at four threads
    assert "13.96 MB" in full_page and "25.8% of FP32" in full_page
    assert "27.40 dB" in full_page and "98.10%" in full_page and "0.99843" in full_page
    assert "71.32%" in full_page and "-0.56 pt" in full_page
    assert "99.987%" in full_page
    assert "812 MB" in full_page and "9.100" in full_page
    assert "Resize" in full_page and "no int8 kernel in ONNX Runtime" in full_page
    assert re.search(r"<code>Conv</code></td><td class=num>52<", full_page)


def test_verdict_badges(full_page):
    assert '<span class="badge ok">parity passed' in full_page
    assert '<span class="badge bad">parity FAILED' in full_page


def test_minimal_report_has_no_quantized_parts():
    page = render_html(minimal_report())
    assert "1.00 MB" in page and "Verdict" not in page and "<img" in page  # size chart only
    assert "Nodes" not in page and "Per-layer" not in page


@pytest.mark.parametrize("report", [
    {}, None, {"variants": None}, {"variants": [None, 3, {}]}, {"variants": [{}, {}]},
    {"title": None, "model": None, "nodes": None, "quantizer": None, "versions": None, "notes": None, "layers": None},
    {"variants": [{"label": 1, "size_bytes": "big", "latency_ms": {"1": None, 2: {"median": "x"}},
                   "fidelity": {"sqnr_db": float("nan")}, "accuracy": {"top1": None}, "parity": {"passed": None}}]},
    {"nodes": {"quantized": [None, {}], "skipped": "no"}, "quantizer": {"stages": {"load": None}},
     "layers": [{"sqnr_db": float("inf")}], "notes": "one note"},
])
def test_missing_or_odd_values_never_crash(report):
    page = render_html(report)
    assert _parse(page).errors == []


def test_zero_and_missing_reference_values():
    r = full_report()
    r["variants"][0]["size_bytes"] = 0
    r["variants"][0]["latency_ms"] = {"1": {"median": 0.0}}
    r["variants"][0]["accuracy"] = None
    page = render_html(r)
    assert _parse(page).errors == []


def test_plots_are_deterministic_and_empty_when_no_data():
    v = full_report()["variants"]
    assert plots.latency_chart(v) == plots.latency_chart(copy.deepcopy(v))
    assert plots.size_chart([{"label": "FP32"}]) is None
    assert plots.latency_chart([{"label": "FP32", "latency_ms": {}}]) is None
    assert plots.layer_sqnr_chart([{"name": "a", "sqnr_db": None}]) is None
