"""Recover on MobileNetV2 (real ImageNet weights, real photos): a short int8 --recover keeps its budget,
never ships a plan worse than PTQ's on its held-out slice, does no harm on crops of photos it never
saw, and ships at PTQ's size. (The issue's bar, 0.96 top-1 agreement, was not reached on the shared
2-core machine: see the report of issue 18.)"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_mobilenet_v2_int8_recover_keeps_budget_and_does_no_harm():
    import torch

    import lowbit
    from lowbit.data import as_feeds
    from lowbit.demo.mobilenet import export_mobilenet, photo_arrays
    from lowbit.load.prepare import prepare
    from lowbit.load.model import load_model
    from lowbit.recover import Recover
    from lowbit.verify import compare_models

    torch.set_num_threads(2)
    fp32 = export_mobilenet()
    calib = np.stack(photo_arrays("calib", 128))
    evaluation = np.stack(photo_arrays("eval", 300))
    ptq = lowbit.quantize(fp32, "int8", calib, verify=None)
    rec = lowbit.quantize(fp32, "int8", calib, verify=None, recover=Recover("30steps", eval_every=10))
    specs = prepare(load_model(fp32), optimize=False).inputs
    accs, _ = compare_models(fp32.SerializeToString(), {"ptq": ptq.model.SerializeToString(),
                                                        "rec": rec.model.SerializeToString()},
                             as_feeds(evaluation, specs, batch_size=32))
    a_ptq, a_rec = (dict(accs[k].result()) for k in ("ptq", "rec"))
    info = rec.plan.config["recover"]
    assert info["steps"] == 30
    assert info["held_out_after"]["score"] <= info["held_out_before"]["score"]
    assert a_rec["kl"] <= 1.05 * a_ptq["kl"], (a_ptq, a_rec)
    assert a_rec["top1_agreement"] >= a_ptq["top1_agreement"] - 0.01, (a_ptq, a_rec)
    assert abs(rec.model.ByteSize() - ptq.model.ByteSize()) < 0.01 * ptq.model.ByteSize()


def test_silero_vad_sequence_int8_recover_keeps_98_percent_of_decisions(tmp_path):
    """The Silero VAD sequence model (Conv STFT front end + LSTM, state h/c carried from call to
    call) recovers on its stateful calibration sequences (each call with the state the FP32 model
    carried into it): `lowbit quantize --stateful h->hn,c->cn --recover` keeps >= 98% of the
    speech / non-speech decisions of FP32 on the zoo's held-out utterances, at PTQ's size."""
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks.zoo import data as zdata
    from benchmarks.zoo import models
    from benchmarks.zoo.run import run_all, session
    from lowbit.metrics import METRICS

    if not (models.cache_dir() / "models").is_dir():
        pytest.skip("zoo models not fetched: run bash scripts/setup_zoo.sh")
    name = "silero-vad-seq"
    entry, model = models.ZOO[name], models.fetch(name)
    folder = models.cache_dir() / "runs" / name
    if not (folder / "eval.npz").exists():
        zdata.save(zdata.build(entry.data), folder)
    calib = zdata.save_sequences(entry.data, folder)
    lowbit_cli = Path(sys.executable).with_name("lowbit")
    outs = {}
    for label, extra in (("ptq", []), ("rec", ["--recover", "300steps"])):
        outs[label] = tmp_path / f"{label}.onnx"
        cmd = [str(lowbit_cli), "quantize", str(model), "--preset", "int8", "--calib", str(calib), "--stateful",
               "h->hn,c->cn", "--no-verify", "-o", str(outs[label]), *extra]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    runs = zdata.load_runs(folder / "eval.npz")
    reference = run_all(session(model), entry, runs)
    metric = METRICS.create(entry.metric, **entry.metric_options)
    kept = {k: metric.score(reference, run_all(session(v), entry, runs)) for k, v in outs.items()}
    assert kept["rec"] >= 0.98, kept
    assert kept["rec"] >= kept["ptq"] - 0.002, kept  # the held-out slice never ships worse than PTQ
    assert abs(outs["rec"].stat().st_size - outs["ptq"].stat().st_size) < 0.01 * outs["ptq"].stat().st_size
