"""Energy arithmetic on a hand-counted model, and the metric registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.verify.energy import ADD_PJ, DRAM_PJ_PER_BYTE, MULT_PJ, SRAM_PJ_PER_BYTE, estimate
from lowbit.load.model import export_torch, load_model
from lowbit.metrics import METRICS, verification_stats
from lowbit.load.prepare import prepare


def _model():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 8 * 8, 4, bias=False)).eval()
    return prepare(load_model(export_torch(net, torch.zeros(1, 3, 8, 8)))).proto


def test_macs_and_energy_by_hand():
    model = _model()
    conv_macs = 8 * 8 * 8 * (3 * 3 * 3)        # output elements x (Cin * kh * kw)
    gemm_macs = 4 * 512
    e32 = estimate(model)
    assert e32["macs"] == conv_macs + gemm_macs
    assert e32["compute_uj"] == pytest.approx((conv_macs + gemm_macs) * (MULT_PJ["fp32"] + ADD_PJ["fp32"]) / 1e6)
    weights = (8 * 27 + 4 * 512) * 4
    acts = (3 * 64 + 512) + (512 + 512) + (512 + 4)  # conv in/out, flatten in/out, gemm in/out (elements)
    assert e32["memory_uj"] == pytest.approx((weights * DRAM_PJ_PER_BYTE + acts * 4 * SRAM_PJ_PER_BYTE) / 1e6)
    nodes = {n.name: "int8" for n in model.graph.node}
    e8 = estimate(model, nodes)
    assert e8["compute_uj"] == pytest.approx((conv_macs + gemm_macs) * (MULT_PJ["int8"] + ADD_PJ["int8"]) / 1e6)
    assert e8["total_uj"] < e32["total_uj"] / 3
    assert "Horowitz" in e32["source"] and "estimate" in e32["source"]


def test_metric_registry_and_face_verification():
    assert {"top1-agreement", "cosine", "sqnr", "face-verification"} <= set(METRICS.names())
    emb = np.array([[0, 0], [0.1, 0], [1, 1], [1.1, 1]], float)
    stats = verification_stats(emb, ["a", "a", "b", "b"], threshold=0.6)
    assert stats["accuracy"] == 1.0 and stats["eer"] == 0.0 and stats["tar_at_far"] == 1.0
    assert 0.1 < stats["best_threshold"] < 1.34
    shifted = verification_stats(emb * 10, ["a", "a", "b", "b"], threshold=0.6)
    assert shifted["accuracy"] < 1.0 and shifted["best_accuracy"] == 1.0
    top1 = METRICS.create("top1-agreement")
    assert top1.score(np.eye(3), np.eye(3)[[0, 2, 1]]) == pytest.approx(1 / 3)
