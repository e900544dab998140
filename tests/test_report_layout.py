"""The HTML report's text layout without a browser (tests/test_report_chromium.py measures it in one):
chart labels, captions, an analysis report's opening, the page without matplotlib, and the optional
dependencies' error."""

import pytest

from lowbit.extras import EXTRAS, MissingExtra, require
from lowbit.report import html, plots
from lowbit.report.plots import common_prefix, short_name

NAMES = ["jax2tf_get_logits_/pjit_get_logits_/MagikaV2/LayerNorm_0/truediv_1",
         "jax2tf_get_logits_/pjit_get_logits_/MagikaV2/Dense_1/MatMul/MatMulAddFusion"]


def test_layer_names_keep_their_start_and_their_op():
    assert short_name("short") == "short"
    cut = short_name("/model.22/cv3.2/cv3.2.0/cv3.2.0.0/conv/Conv", 30)
    assert len(cut) == 30 and cut.startswith("/model.22/") and cut.endswith("/conv/Conv")
    assert common_prefix(NAMES) == "jax2tf_get_logits_/pjit_get_logits_/MagikaV2/"
    assert common_prefix(["model/block_1/conv", "model/block_2/conv"]) == "model/"  # never mid-name
    assert common_prefix(["a/x", "a/y"]) == ""                                        # too short to drop
    assert common_prefix(NAMES[:1]) == ""


def _analysis() -> dict:
    layers = [{"name": n, "op": "Mul", "only_this_metric": 0.23, "all_but_this_metric": 0.23,
               "only_this_sqnr_db": 0.1} for n in NAMES]
    return {"title": "lowbit analyze: magika", "analysis": {"metric": "top1-agreement", "reference_metric": 1.0,
                                                           "all_int8_metric": 0.4375, "all_int8_sqnr_db": 9.87654,
                                                           "samples": 48, "layers": layers},
            "histograms": [{"layer": NAMES[0], "counts": [5, 0, 2], "edges": [0.0040198322385549545, 100.0, 200.0,
                                                                              362.7200012207031],
                            "observed": [0.0040198322385549545, 362.7200012207031],
                            "clip": [0.0040198322385549545, 362.7200012207031]}]}


def test_analysis_report_opens_with_its_findings():
    page = html.render_html(_analysis())
    assert "No variants measured" not in page
    assert page.index("<h2>Analysis</h2>") < page.index("<h2>Amenability</h2>")
    assert "FP32 top1-agreement 1.0000 · every layer INT8: 0.4375 (SQNR 9.9 dB)" in page
    assert "top1-agreement with only this layer in INT8" in page     # the metric named, not "metric"
    assert "observed range [0.00402, 362.7], clipped to [0.00402, 362.7]" in page
    assert "0.0040198322385549545" not in page
    assert "No variants measured" in html.render_html({"title": "empty"})   # where there is really nothing


def test_summary_of_many_variants_is_compact_and_boxed():
    variants = [{"label": f"v{i}", "size_bytes": 1e6 / (i + 1)} for i in range(5)]
    page = html.render_html({"variants": variants})
    assert '<div class="wide"><table class="summary many">' in page
    assert '<table class="summary">' in html.render_html({"variants": variants[:3]})


def test_page_without_matplotlib_says_how_to_get_charts(monkeypatch):
    monkeypatch.setattr(plots, "available", lambda: False)
    page = html.render_html({**_analysis(), "variants": [{"label": "fp32", "size_bytes": 1e6},
                                                         {"label": "int8", "size_bytes": 2.6e5}],
                             "layers": [{"name": NAMES[0], "sqnr_db": 12.0}]})
    assert "data:image/png" not in page and page.count("pip install 'lowbit[report]'") == 3


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(EXTRAS, "lowbit_no_such_module", ("torch", "torch"))
    with pytest.raises(MissingExtra, match=r"QAT: this needs torch.*pip install 'lowbit\[torch\]'"):
        require("lowbit_no_such_module", "QAT")
    with pytest.raises(ImportError):  # still an ImportError for callers that catch those
        require("lowbit_no_such_module.sub", "QAT")
    assert require("numpy", "arrays").__name__ == "numpy"
