"""KeepIfBetter: a plan-stage algorithm's weights are kept only when the simulated output gets
closer to FP32 on calibration batches it did not fit; the decision is recorded and serialisable."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from test_algorithms_rounding import smooth_images, tiny_convnet

import lowbit
from lowbit import PerChannel, QuantConfig, Scheme
from lowbit.algorithms import GPTQ, BiasCorrection, CrossLayerEqualization, KeepIfBetter
from lowbit.plan.algorithm import Algorithm
from lowbit.algorithms.keep_if_better import HOLDOUT, _Split
from lowbit.core.fidelity import paired_gain_db
from lowbit.core.dtypes import int4
from lowbit.onnx.graph import GraphIndex


@dataclass(frozen=True)
class _ScaleWeights(Algorithm):
    """Harms on purpose: every quantized weight times `factor` (the plan is left as it was)."""

    factor: float = 0.5
    stage = "plan"
    registry_name = "scale-weights (test)"

    def apply(self, model, plan, ctx):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        g = GraphIndex(out)
        for init in out.graph.initializer:
            t = plan.tensors.get(init.name)
            if t is not None and t.role == "weight":
                init.CopyFrom(onnx.numpy_helper.from_array(g.constant(init.name) * self.factor, init.name))
        return out, plan


def _config(alg) -> QuantConfig:
    return QuantConfig(objective="size", weights=Scheme(int4, PerChannel(0), symmetric=True), algorithms=(alg,))


def test_split_holds_out_every_fourth_batch_up_to_samples() -> None:
    data = list(range(40))
    held, fit = list(_Split(data, True, samples=6)), list(_Split(data, False, samples=6))
    assert held == [3, 7, 11, 15, 19, 23]
    assert sorted(held + fit) == data and not set(held) & set(fit)
    assert list(_Split(data, True, samples=6)) == held  # re-iterable, the same each pass
    assert HOLDOUT == 4


def test_bootstrap_gain_bound() -> None:
    rng = np.random.default_rng(0)
    without = rng.uniform(1.0, 2.0, size=32)
    gain, low = paired_gain_db(without, without / 2.0, 0.05, seed=0)  # every input's error halves
    assert gain == pytest.approx(10 * np.log10(2.0)) and low == pytest.approx(gain)
    mixed = without * np.where(np.arange(32) < 2, 0.01, 1.02)  # two inputs carry the whole gain
    gain, low = paired_gain_db(without, mixed, 0.05, seed=0)
    assert gain > 0 > low


def test_helpful_rounding_is_kept_and_harmful_change_dropped() -> None:
    model, calib = tiny_convnet(), smooth_images(16, 1)
    plain = lowbit.quantize(model, _config(KeepIfBetter(_ScaleWeights(1.0), min_gain_db=0.0)), calib, verify=None)
    harmed = lowbit.quantize(model, _config(KeepIfBetter(_ScaleWeights(0.5))), calib, verify=None)
    record = harmed.plan.decisions.algorithm_choices["scale-weights (test)"]
    assert record["kept"] is False and record["held_out"] and record["samples"] == 4
    assert record["sqnr_with_db"] < record["sqnr_without_db"]
    weights = [{i.name: i.SerializeToString() for i in r.model.graph.initializer} for r in (harmed, plain)]
    assert weights[0] == weights[1]  # the unchanged weights

    gptq = lowbit.quantize(model, _config(KeepIfBetter(GPTQ(block_size=8, threads=1), min_gain_db=0.0)), calib,
                           verify=None)
    record = gptq.plan.decisions.algorithm_choices["gptq"]
    assert record["sqnr_with_db"] > record["sqnr_without_db"]  # 4-bit weights: GPTQ beats plain rounding
    assert record["kept"] is (record["gain_lower_bound_db"] > 0.0)


def test_config_round_trip_and_bad_wrapping() -> None:
    cfg = lowbit.preset("int8")
    again = QuantConfig.from_dict(cfg.to_dict())
    wrapped = again.algorithms[1]
    assert isinstance(wrapped, KeepIfBetter) and isinstance(wrapped.algorithm, GPTQ)
    assert wrapped == cfg.algorithms[1] and isinstance(wrapped.then[0], BiasCorrection)
    with pytest.raises(lowbit.ConfigError, match="plan-stage"):
        KeepIfBetter(CrossLayerEqualization())
    with pytest.raises(lowbit.ConfigError, match="samples"):
        KeepIfBetter(GPTQ(), samples=0)
