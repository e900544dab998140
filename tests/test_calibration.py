"""Contracts of the calibration methods: known distributions, exact shard merging, degenerate data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.calibration import (CALIBRATIONS, MSE, Entropy, HistogramObserver, MinMax, MovingAverageMinMax,
                                Percentile, weight_range)
from lowbit.calibration.base import calibration_from_dict
from lowbit.calibration.histogram import coarsen
from lowbit.core.dtypes import int4, int8, uint8
from lowbit.core.granularity import PerChannel, PerTensor
from lowbit.core.qparams import choose_qparams, fake_quantize
from lowbit.errors import ConfigError, DataError

HISTOGRAM_METHODS = [Percentile(), Entropy(), MSE()]
ALL_METHODS = [MinMax(), MovingAverageMinMax(), *HISTOGRAM_METHODS]


def sample(kind: str, n: int = 200_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = {"gauss": lambda: rng.standard_normal(n), "laplace": lambda: rng.laplace(size=n),
         "uniform": lambda: rng.uniform(-1.0, 1.0, n), "relu": lambda: np.maximum(rng.standard_normal(n), 0.0),
         "student": lambda: rng.standard_t(2, n)}[kind]()
    return x.astype(np.float32)


def observe(method, x: np.ndarray, batches: int = 4):
    obs = method.observer()
    for part in np.array_split(x, batches):
        obs.update(part)
    return obs


def quant_mse(x: np.ndarray, lo: float, hi: float, dtype, symmetric: bool) -> float:
    scale, zp = choose_qparams(lo, hi, dtype, symmetric)
    return float(np.mean((fake_quantize(x, scale, zp, dtype) - x) ** 2))


def test_registry_names_and_round_trip():
    assert {"minmax", "moving_average", "percentile", "entropy", "mse"} <= set(CALIBRATIONS.names())
    for m in ALL_METHODS:
        assert calibration_from_dict(m.to_dict()) == m


@pytest.mark.parametrize("kind", ["gauss", "laplace"])
def test_percentile_within_one_bin_of_numpy(kind):
    x = sample(kind, 500_000)
    p = 99.9
    obs = observe(Percentile(p), x)
    w = obs.width
    lo, hi = obs.range(uint8, False)
    assert abs(lo - np.percentile(x, 100 - p)) <= w and abs(hi - np.percentile(x, p)) <= w
    lo, hi = obs.range(int8, True)
    t = np.percentile(np.abs(x), p)
    assert abs(hi - t) <= w and lo == -hi


def test_percentile_of_relu_keeps_zero_as_lower_end():
    lo, hi = observe(Percentile(), sample("relu")).range(uint8, False)
    assert lo == 0.0 and 3.0 < hi < 5.0


@pytest.mark.parametrize("kind", ["student", "laplace"])
@pytest.mark.parametrize("dtype,symmetric", [(uint8, False), (int8, True), (int4, True)])
def test_mse_beats_minmax_on_heavy_tails(kind, dtype, symmetric):
    x = sample(kind)
    lo, hi = observe(MSE(), x).range(dtype, symmetric)
    assert hi < x.max()  # it clipped
    assert quant_mse(x, lo, hi, dtype, symmetric) < quant_mse(x, x.min(), x.max(), dtype, symmetric)


def test_entropy_clips_laplace_tail_and_keeps_uniform_range():
    x = sample("laplace")
    lo, hi = observe(Entropy(), x).range(int8, True)
    assert hi < 0.9 * np.abs(x).max() and lo == -hi
    u = sample("uniform")
    lo, hi = observe(Entropy(), u).range(int8, True)
    assert lo <= -0.98 and hi >= 0.98


def test_entropy_one_sided_stays_one_sided():
    x = sample("relu")
    lo, hi = observe(Entropy(), x).range(uint8, False)
    assert lo == 0.0 and 2.0 < hi <= x.max()
    lo, hi = observe(Entropy(), -x).range(uint8, False)
    assert hi == 0.0 and -x.max() <= lo < -2.0


def test_moving_average_is_the_manual_ema():
    rng = np.random.default_rng(1)
    batches = [rng.normal(scale=s, size=100).astype(np.float32) for s in (1.0, 3.0, 0.5, 2.0)]
    obs = MovingAverageMinMax(momentum=0.8).observer()
    lo, hi = float(batches[0].min()), float(batches[0].max())
    for i, b in enumerate(batches):
        obs.update(b)
        if i:
            lo, hi = 0.8 * lo + 0.2 * float(b.min()), 0.8 * hi + 0.2 * float(b.max())
    assert obs.range() == pytest.approx((lo, hi), rel=1e-12)
    assert obs.observed_range() == (min(b.min() for b in batches), max(b.max() for b in batches))


def test_moving_average_merge_is_count_weighted():
    a, b = MovingAverageMinMax().observer(), MovingAverageMinMax().observer()
    a.update(np.array([-1.0, 1.0], np.float32))
    b.update(np.array([-4.0, 0.0, 2.0, 4.0, 0.0, 1.0], np.float32))
    a.merge(b)
    assert a.range() == pytest.approx((0.25 * -1 + 0.75 * -4, 0.25 * 1 + 0.75 * 4)) and a.count == 8


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(0, 3000), max_size=6), seed=st.integers(0, 2**16),
       scale_exp=st.integers(-30, 30), order=st.randoms(use_true_random=False))
def test_shards_merge_exactly(cuts, seed, scale_exp, order):
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, 3000) * 2.0**scale_exp).astype(np.float32)
    x[rng.integers(0, 3000, 50)] = 0.0
    for method in (Percentile(bins=256), Entropy(bins=256), MSE(bins=256, candidates=64)):
        single = method.observer()
        for part in np.split(x, [0, 700, 1800]):  # a single pass over three batches
            single.update(part)
        shards = []
        for part in np.split(x, sorted(cuts)):
            shards.append(method.observer())
            shards[-1].update(part)
        order.shuffle(shards)
        merged = shards[0]
        for s in shards[1:]:
            merged.merge(s)
        assert np.array_equal(merged.counts, single.counts) and merged.exp == single.exp
        assert (merged.count, merged.zeros, merged.observed_range()) == (single.count, single.zeros,
                                                                          single.observed_range())
        for grid in [(uint8, False), (int8, True), (int4, True)]:
            assert merged.range(*grid) == single.range(*grid)


def test_growth_is_exact_rebinning():
    rng = np.random.default_rng(2)
    small, big = rng.uniform(-1, 1, 5000).astype(np.float32), rng.uniform(-700, 700, 10).astype(np.float32)
    grown = HistogramObserver(bins=64)
    grown.update(small)
    r0 = grown.radius
    grown.update(big)
    assert grown.radius == 1024.0 and r0 == 1.0
    direct = HistogramObserver(bins=64)
    direct.update(np.concatenate([big, small]))
    assert np.array_equal(grown.counts, direct.counts)
    edges = np.linspace(-1024.0, 1024.0, 65)
    assert np.array_equal(direct.counts, np.histogram(np.concatenate([small, big]), edges)[0])


def test_coarsen_nests_bins():
    c = np.arange(16, dtype=np.int64)
    assert np.array_equal(coarsen(coarsen(c, 2), 4), coarsen(c, 8))
    assert np.array_equal(coarsen(c, 2)[4:12], c.reshape(-1, 2).sum(1)) and coarsen(c, 2).sum() == c.sum()
    assert np.array_equal(coarsen(c, 1 << 20), coarsen(c, 8))  # everything in the two middle bins


def test_values_on_bin_edges_go_right():
    obs = HistogramObserver(bins=8)
    obs.update(np.array([-1.0, -0.5, 0.0, -0.0, 0.5, 1.5], np.float32))  # R = 2, width 0.5
    assert obs.radius == 2.0 and obs.counts.tolist() == [0, 0, 1, 1, 2, 1, 0, 1]


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.registry_name)
@pytest.mark.parametrize("x,expected", [(np.zeros(100), (0.0, 0.0)), (np.full(50, 3.5), (3.5, 3.5)),
                                        (np.full(7, -2.0), (-2.0, -2.0)), (np.array([0.25]), (0.25, 0.25)),
                                        (np.zeros(0), (0.0, 0.0))])
def test_degenerate_inputs(method, x, expected):
    obs = observe(method, x.astype(np.float32), batches=1)
    assert obs.observed_range() == expected and obs.count == x.size
    for grid in [(uint8, False), (int8, True)]:
        lo, hi = obs.range(*grid) if not isinstance(method, MinMax) else obs.range()
        assert (lo, hi) == expected


@pytest.mark.parametrize("method", ALL_METHODS[1:], ids=lambda m: m.registry_name)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(method, bad):
    x = np.ones(10, np.float32)
    x[3] = bad
    with pytest.raises(DataError, match="non-finite"):
        method.observer().update(x)


def test_bad_configs_fail_when_built():
    for make in (lambda: Percentile(30.0), lambda: Entropy(bins=1000), lambda: MovingAverageMinMax(1.0),
                 lambda: MSE(candidates=2), lambda: Entropy(target_bins=1)):
        with pytest.raises(ConfigError):
            make()
    with pytest.raises(ConfigError, match="same calibration"):
        Percentile().observer().merge(MSE().observer())


def test_weight_range_per_channel():
    rng = np.random.default_rng(3)
    w = rng.laplace(size=(4, 2000)).astype(np.float32)
    lo, hi = weight_range(MSE(), w, PerChannel(0), int4, True)
    assert lo.shape == (4,) and np.all(hi < np.abs(w).max(axis=1)) and np.all(lo == -hi)
    lo, hi = weight_range(MinMax(), w, PerTensor(), int8, True)
    assert (float(lo), float(hi)) == (float(w.min()), float(w.max()))


def test_clipping_level_is_chosen_by_output_error(small_model_path, calib_arrays):
    """The int8 preset tries each percentile level on the same histograms and keeps the plan whose
    simulated output is closest to FP32; a full-range plan differs from a clipped one."""
    import lowbit

    r = lowbit.quantize(small_model_path, "int8", calib_arrays, verify=None)
    clip = r.plan.decisions.activation_clipping
    levels = {float(k): v for k, v in clip["levels"].items()}
    assert set(levels) >= {99.99, 99.999, 100.0} and clip["samples"] == len(calib_arrays)
    assert levels[clip["chosen"]] == max(levels.values())
    assert r.plan.config["activations"]["calibration"]["percentile"] == clip["chosen"]
