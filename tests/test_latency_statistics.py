"""Latency statistics: the paired interval that decides 'slower beyond noise', and shuffled rounds."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.verify import speedup_interval


def _rounds(n: int = 60, seed: int = 0) -> np.ndarray:
    return 10.0 * np.random.default_rng(seed).normal(1.0, 0.05, n).clip(0.8)  # a noisy machine, per round


def test_same_model_twice_is_not_slower() -> None:
    rounds = _rounds()
    own = np.random.default_rng(1).normal(1.0, 0.01, rounds.size)
    ratio, lo, hi = speedup_interval(list(rounds), list(rounds * own))
    assert lo < 1.0 < hi
    assert hi - lo < 0.03  # pairing removes the rounds' shared 5% noise


def test_a_real_slowdown_is_found() -> None:
    rounds = _rounds()
    ratio, lo, hi = speedup_interval(list(rounds), list(rounds * 1.04))
    assert ratio == pytest.approx(1 / 1.04, rel=1e-6)
    assert hi < 1.0


def test_unpaired_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="paired samples"):
        speedup_interval([1.0, 2.0], [1.0])


def test_measure_latency_keeps_every_round(tiny_model_bytes: bytes) -> None:
    from lowbit.verify import measure_latency

    feeds = {"x": np.zeros((1, 4), np.float32)}
    lat = measure_latency({"a": tiny_model_bytes, "b": tiny_model_bytes}, feeds, threads=(1,), runs=7,
                          warmup=1, keep_samples=True)
    assert len(lat["a"]["1"]["samples"]) == len(lat["b"]["1"]["samples"]) == 7
    assert lat["a"]["1"]["median"] == pytest.approx(float(np.median(lat["a"]["1"]["samples"])), abs=1e-3)


@pytest.fixture
def tiny_model_bytes() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_blocks_of_new_sessions_carry_their_placement_into_the_interval() -> None:
    """One graph, four session pairs: each variant session is placed 2-8% worse or 3% better for its
    whole life. Resampling rounds alone calls that a real difference; resampling blocks does not."""
    rounds = _rounds(80)
    placement = np.repeat([1.06, 1.05, 0.97, 1.02], 20)
    _, lo1, hi1 = speedup_interval(list(rounds), list(rounds * placement))
    _, lo4, hi4 = speedup_interval(list(rounds), list(rounds * placement), blocks=4)
    assert hi1 < 1.0 or lo1 > 1.0  # rounds only: "significant"
    assert lo4 < 1.0 < hi4


def test_measure_latency_in_blocks_keeps_every_round(tiny_model_bytes: bytes) -> None:
    from lowbit.verify import measure_latency

    lat = measure_latency({"a": tiny_model_bytes, "b": tiny_model_bytes}, {"x": np.zeros((1, 4), np.float32)},
                          threads=(1,), runs=9, warmup=1, keep_samples=True, blocks=3)
    assert len(lat["a"]["1"]["samples"]) == 9 and lat["a"]["1"]["blocks"] == 3
