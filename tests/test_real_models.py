"""Real pretrained models on real data (slow; run in CI): MobileNetV2 on ImageNet photos and the
doorbell's face descriptor against dlib."""

from __future__ import annotations

import pytest

import lowbit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    pytest.importorskip("skimage", reason="run bash scripts/setup.sh for the real photos")
    from lowbit.demo.mobilenet import export_mobilenet, photo_arrays

    path = tmp_path_factory.mktemp("mbv2") / "mobilenet_v2.onnx"
    export_mobilenet(path)
    return path, photo_arrays("calib", 64), photo_arrays("eval", 100)


def test_mobilenet_v2_int8_is_faithful_small_and_exact(mobilenet):
    path, calib, ev = mobilenet
    r = lowbit.quantize(path, "int8", calib, eval_data=ev, verify=lowbit.VerifyOptions(threads=()))
    ref, q = r.report.variants
    assert q["parity"]["passed"]
    assert q["fidelity"]["top1_agreement"] >= 0.85
    assert q["size_bytes"] <= 0.275 * ref["size_bytes"]


def test_mobilenet_v2_fp16_agrees(mobilenet):
    path, _, ev = mobilenet
    r = lowbit.quantize(path, "fp16", eval_data=ev, verify=lowbit.VerifyOptions(threads=()))
    ref, h = r.report.variants
    assert h["fidelity"]["top1_agreement"] >= 0.99
    assert h["size_bytes"] <= 0.51 * ref["size_bytes"]


def test_doorbell_decisions_match_dlib(tmp_path):
    pytest.importorskip("dlib", reason="run bash scripts/setup.sh for the face data")
    from lowbit.demo.doorbell import run_doorbell

    report = run_doorbell(tmp_path, threads=(1,), latency_runs=5)
    s = report.data["doorbell"]
    for label in ("fp16", "int8", "mixed"):
        n = s[label]["decisions_as_dlib"].split("/")
        assert n[0] == n[1], (label, s[label]["decisions_as_dlib"])
        assert s[label]["verification"]["accuracy"] == 1.0
        assert s[label]["mean_cos_to_dlib"] >= 0.999  # the README's claim (int8: 0.99939 measured, VNNI)
    int8 = report.variant("int8")
    assert int8["parity"]["passed"]
    assert int8["size_bytes"] <= 0.27 * report.variant("fp32")["size_bytes"]
    assert report.variant("mixed")["fidelity"]["cosine"] >= int8["fidelity"]["cosine"]
    assert (tmp_path / "report.html").is_file()
