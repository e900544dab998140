"""Recover on MobileNetV2 (real ImageNet weights, real photos): int8 --recover brings the decisions on
crops of photos it never saw closer to FP32 than PTQ, at PTQ's size and with the same kernels."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_mobilenet_v2_int8_recover_beats_ptq_on_unseen_photos():
    import torch

    import lowbit
    from lowbit.data import as_feeds
    from lowbit.demo.mobilenet import export_mobilenet, photo_arrays
    from lowbit.prepare import prepare
    from lowbit.load import load_model
    from lowbit.recover import Recover
    from lowbit.verify import compare_models

    torch.set_num_threads(2)
    fp32 = export_mobilenet()
    calib = np.stack(photo_arrays("calib", 128))
    evaluation = np.stack(photo_arrays("eval", 300))
    ptq = lowbit.quantize(fp32, "int8", calib, verify=None)
    rec = lowbit.quantize(fp32, "int8", calib, verify=None, recover=Recover("60steps", eval_every=10))
    specs = prepare(load_model(fp32), optimize=False).inputs
    accs, _ = compare_models(fp32.SerializeToString(), {"ptq": ptq.model.SerializeToString(),
                                                        "rec": rec.model.SerializeToString()},
                             as_feeds(evaluation, specs, batch_size=32))
    a_ptq, a_rec = (dict(accs[k].result()) for k in ("ptq", "rec"))
    info = rec.plan.config["recover"]
    assert info["steps"] == 60
    assert info["held_out_after"]["score"] <= info["held_out_before"]["score"]
    assert a_rec["kl"] < a_ptq["kl"], (a_ptq, a_rec)
    assert a_rec["top1_agreement"] >= a_ptq["top1_agreement"], (a_ptq, a_rec)
    assert abs(rec.model.ByteSize() - ptq.model.ByteSize()) < 0.01 * ptq.model.ByteSize()
