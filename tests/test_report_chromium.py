"""The HTML report as a browser lays it out: headless Chromium at 1280 px, the width of a laptop
window. No horizontal overflow with six variants, no empty sections, layer names that stay inside
their cells, and an analysis report that opens with its findings. Needs a chromium binary
(scripts/setup_chromium.sh installs Debian's)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lowbit.report.html import render_html

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH = 1280
# appended to a copy of the page: measures the layout and writes it into the DOM for --dump-dom
PROBE = """<script>
(function () {
  var d = document.documentElement, out = {scrollWidth: d.scrollWidth, wide: [], cells: [], empty: []};
  document.querySelectorAll('main *').forEach(function (el) {
    if (el.closest('.wide')) return;  /* the summary's scroll box may scroll, the page may not */
    var r = el.getBoundingClientRect();
    if (r.right > d.clientWidth + 1) out.wide.push(el.tagName + '.' + el.className);
  });
  document.querySelectorAll('td').forEach(function (td) {
    if (td.scrollWidth > td.clientWidth + 1) out.cells.push(td.textContent.slice(0, 60));
  });
  document.querySelectorAll('h2').forEach(function (h) {
    var n = h.nextElementSibling;
    if (!n || n.tagName === 'H2') out.empty.push(h.textContent);
  });
  out.firstH2 = (document.querySelector('h2') || {}).textContent || '';
  out.text = document.body.innerText.slice(0, 400);
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""

LAYERS = [f"jax2tf_get_logits_/pjit_get_logits_/MagikaV2/{b}_{i}/{op}"
          for i, (b, op) in enumerate([("LayerNorm", "truediv_1"), ("ApplyActivation", "Mul_5"),
                                       ("Dense", "MatMul/MatMulAddFusion"), ("Conv", "Conv2D"),
                                       ("LayerNorm", "Square_1"), ("Dense", "einsum/Einsum")])]


def _variant(label: str, i: int) -> dict:
    lat = {t: {"median": 40.0 / (1 + i) * (1 + 0.1 * k), "p10": 35.0, "p90": 61.3, "runs": 30}
           for k, t in enumerate(("1", "2", "4"))}
    v = {"label": label, "precision": label.split(".")[0], "size_bytes": 12_150_000 // (1 + i), "latency_ms": lat}
    if i:
        v["metrics"] = [{"name": "detection-yolo", "value": 0.9583, "n": 120, "ci_low": 0.9135, "ci_high": 0.9876,
                         "higher_is_better": True, "definition": "F1 at IoU 0.5", "outputs": ["output0"],
                         "source": "inferred", "reason": "a YOLO head", "undefined": 0},
                        {"name": "sqnr", "value": 30.59, "n": 120, "ci_low": None, "ci_high": None,
                         "higher_is_better": True, "definition": "SQNR", "outputs": ["output0"],
                         "source": "generic", "reason": "", "undefined": 0}]
        v["parity"] = {"passed": True, "within_one_step": 0.99998, "max_steps": 2, "elements": 1_234_567}
        v["kernels"] = {"unfused": [], "kept_float": [{"node": LAYERS[0]}], "integer_kernels": 64, "float_kernels": 3}
        v["energy_uj"] = 1234.5
    return v


def _eval_report() -> dict:
    labels = ["fp32", "fp16.onnx", "int8-transformer.onnx", "int8-fast.onnx", "w4a8.onnx", "ort-static-quantized.onnx"]
    return {"title": "lowbit eval: 320n", "model": {"name": "320n", "source": "/very/long/path/" * 6 + "320n.onnx"},
            "variants": [_variant(lab, i) for i, lab in enumerate(labels)],
            "metric": {"headline": "detection-yolo", "source": "inferred", "reason": "a YOLO head",
                       "definition": "F1 at IoU 0.5"},
            "nodes": {"skipped": [{"name": n, "op": "Mul", "reason": "kept FP32: " + "long reason " * 8}
                                  for n in LAYERS]},
            "layers": [{"name": n, "op": "Conv", "precision": "int8", "sqnr_db": 20.0 + i}
                       for i, n in enumerate(LAYERS)],
            "notes": ["Latency at 2 thread(s) is noisy."]}


def _analyze_report() -> dict:
    rng = np.random.default_rng(0)
    layers = [{"name": n, "op": "Mul", "only_this_metric": 0.2 + 0.1 * i, "all_but_this_metric": 0.25 + 0.1 * i,
               "only_this_sqnr_db": 0.1 + 5 * i} for i, n in enumerate(LAYERS)]
    counts = rng.integers(0, 1000, 120).tolist()
    return {"title": "lowbit analyze: model", "model": {"name": "model"}, "precision": "int8",
            "analysis": {"metric": "top1-agreement", "reference_metric": 1.0, "all_int8_metric": 0.0,
                         "all_int8_sqnr_db": -3.5, "samples": 48, "evaluations": 12, "layers": layers},
            "layers": [{"name": n, "op": "Mul", "precision": "int8", "sqnr_db": 5.0 * i} for i, n in enumerate(LAYERS)],
            "tables": [{"title": "Layers ranked by sensitivity (most sensitive first)",
                        "header": ["layer", "op", "top1-agreement: only this INT8", "likely cause"],
                        "rows": [[n, "Mul", "0.2292", "coarse grid: " + "words " * 12] for n in LAYERS]}],
            "histograms": [{"layer": LAYERS[0], "tensor": "x", "counts": counts,
                            "edges": np.linspace(0.0040198322385549545, 362.7200012207031, 121).tolist(),
                            "observed": [0.0040198322385549545, 362.7200012207031],
                            "clip": [0.0040198322385549545, 362.7200012207031]}]}


def _layout(page: str, tmp: Path, name: str) -> dict:
    path = tmp / f"{name}.html"
    path.write_text(page.replace("</body>", PROBE + "</body>"))
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={WIDTH},900"]
    dom = subprocess.run([*args, "--virtual-time-budget=3000", "--dump-dom", path.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    shot = tmp / f"{name}.png"
    subprocess.run([*args, f"--screenshot={shot}", path.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000, "chromium wrote no screenshot"
    found = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: bash scripts/setup_chromium.sh")
def test_reports_fit_1280px_in_chromium(tmp_path):
    ev = _layout(render_html(_eval_report()), tmp_path, "eval")
    assert ev["scrollWidth"] <= WIDTH and not ev["wide"], ev          # six variants: no horizontal overflow
    assert not ev["cells"] and not ev["empty"], ev                    # names wrap inside cells; no empty section

    an = _layout(render_html(_analyze_report()), tmp_path, "analyze")
    assert an["scrollWidth"] <= WIDTH and not an["wide"] and not an["cells"] and not an["empty"], an
    assert "No variants measured" not in an["text"] and an["firstH2"] == "Analysis", an
    page = render_html(_analyze_report())
    assert "362.72" not in page and "[0.00402, 362.7]" in page       # captions at 4 significant digits
    assert "top1-agreement with only this layer" in page             # the metric named, not "metric"
