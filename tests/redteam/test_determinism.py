"""Determinism that holds across runs and machines: latency choices that timing noise cannot flip,
plans that re-apply without re-measuring, and a layer-cost cache read back like user input."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import onnx
import pytest

import lowbit
from lowbit.target import layer_cost_cache
from lowbit.emit.metadata import plan_from_model
from lowbit.target.latency_choice import MARGIN, estimate_ratio
from lowbit.target.layer_costs import LayerCost, measure_layer_costs
from lowbit.load.model import load_model
from lowbit.load.prepare import prepare
from lowbit.plan.selection import keep_float_for_speed

LATENCY = lowbit.QuantConfig(objective="latency")  # the plain int8 scheme, no algorithms: fast and exact


def _runs(median: float, rel_noise: float, n: int = 15, seed: int = 0) -> list[float]:
    """n per-run times around `median` with multiplicative noise of +-rel_noise (uniform)."""
    rng = np.random.default_rng(seed)
    return list(median * (1 + rng.uniform(-rel_noise, rel_noise, n)))


# --- (a) the keep-float decision on given per-run times -------------------------------------------

def test_three_percent_slower_within_noise_goes_int8():
    est = estimate_ratio(_runs(1.0, 0.08, seed=1), _runs(1.03, 0.08, seed=2))
    assert 0.95 < est.ratio < 1.12 and est.low < 1 + MARGIN
    assert not est.clearly_slower


def test_thirty_percent_slower_beyond_noise_stays_fp32():
    est = estimate_ratio(_runs(1.0, 0.05, seed=1), _runs(1.3, 0.05, seed=2))
    assert est.low > 1 + MARGIN and est.clearly_slower
    assert est.runs == 15 and est.low <= est.ratio <= est.high


def test_consistent_but_tiny_slowdown_is_inside_the_margin():
    # no noise at all: 3% slower every run is still below the fixed margin
    est = estimate_ratio([1.0] * 9, [1.03] * 9)
    assert est.low == pytest.approx(1.03) and not est.clearly_slower


def test_wide_spread_hides_a_slower_median():
    # median ratio 1.3, but a quarter of the runs or more show INT8 as fast: within noise
    fp32 = [1.0] * 12
    int8 = [0.9, 0.95, 1.0, 1.02, 1.3, 1.3, 1.3, 1.35, 1.4, 1.4, 1.5, 1.6]
    est = estimate_ratio(fp32, int8)
    assert est.ratio > 1.25 and not est.clearly_slower


def test_decision_is_a_function_of_the_runs():
    f, q = _runs(1.0, 0.1, seed=3), _runs(1.12, 0.1, seed=4)
    assert estimate_ratio(f, q) == estimate_ratio(list(f), list(q))


def test_only_layers_beyond_noise_are_kept_and_their_timings_recorded(small_model_path):
    model = prepare(load_model(small_model_path)).proto
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    slow = LayerCost.from_runs(convs[0], "Conv", {"fp32": _runs(0.3, 0.05, seed=1), "int8": _runs(0.39, 0.05, seed=2),
                                                  "fp16": _runs(0.5, 0.05, seed=3)})
    noisy = LayerCost.from_runs(convs[2], "Conv", {"fp32": _runs(0.3, 0.1, seed=4), "int8": _runs(0.31, 0.1, seed=5),
                                                   "fp16": _runs(0.5, 0.1, seed=6)})
    reasons, timings = keep_float_for_speed(model, {c.node: c for c in (slow, noisy)}, budget=1.0)
    assert set(reasons) == set(timings) == {convs[0]}
    t = timings[convs[0]]
    assert t["runs"] == 15 and t["int8_ms"] > t["fp32_ms"] and t["ratio_iqr"][0] > 1 + MARGIN
    # the reason goes into the model file: no measured number in it
    assert "ms" not in reasons[convs[0]] and "layer_costs" in reasons[convs[0]]


# --- (b) fresh caches give the same bytes; (c) a saved plan re-applies without measuring -----------

def test_two_fresh_caches_give_byte_identical_models(small_model_path, calib_arrays, tmp_path, monkeypatch):
    outs = []
    for i in range(2):
        monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / f"cache{i}"))
        r = lowbit.quantize(small_model_path, LATENCY, calib_arrays, verify=None)
        assert (tmp_path / f"cache{i}" / "layer_costs.json").is_file()  # both measured from scratch
        outs.append(r.model.SerializeToString())
    assert outs[0] == outs[1]


def test_timings_stay_out_of_the_model_file(small_model_path, calib_arrays, tmp_path, monkeypatch):
    """A plan with latency timings writes the same model as the plan without them."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    r = lowbit.quantize(small_model_path, LATENCY, calib_arrays, verify=None)
    plan = r.plan
    plan.decisions.layer_costs = {"some-conv": {"fp32_ms": 0.2, "int8_ms": 0.5}}
    a = lowbit.quantize(small_model_path, LATENCY, plan=plan, verify=None).model
    plan.decisions.layer_costs = None
    b = lowbit.quantize(small_model_path, LATENCY, plan=plan, verify=None).model
    assert a.SerializeToString() == b.SerializeToString()
    assert plan_from_model(a).decisions.layer_costs is None


def test_saved_plan_reapplies_byte_identically_without_measuring(small_model_path, calib_arrays, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    r = lowbit.quantize(small_model_path, "int8", calib_arrays, output=tmp_path / "a.onnx", verify=None)
    r.plan.save(tmp_path / "plan.json")
    (tmp_path / "float.onnx").write_bytes(r.float_model.SerializeToString())

    def no_measuring(*a, **k):
        raise AssertionError("re-applying a plan measured layer costs")

    monkeypatch.setattr("lowbit.target.layer_costs.measure_layer_costs", no_measuring)
    monkeypatch.setattr("lowbit.target.layer_costs._time", no_measuring)
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "other-cache"))  # another machine's (empty) cache
    r2 = lowbit.quantize(tmp_path / "float.onnx", "int8", plan=tmp_path / "plan.json", output=tmp_path / "b.onnx",
                         verify=None)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert r2.plan.to_json() == r.plan.to_json()
    assert not (tmp_path / "other-cache").exists()


def test_plan_records_timings_of_layers_kept_for_speed(small_model_path, calib_arrays, tmp_path, monkeypatch):
    """With timings that make the stem clearly slower (and a budget it fits), the plan says why."""
    import lowbit.plan.selection as selection

    model = prepare(load_model(small_model_path)).proto
    stem = next(n.name for n in model.graph.node if n.op_type == "Conv")

    def fake_costs(m, **k):
        names = [n.name for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
        return {n: LayerCost.from_runs(n, "Conv", {"fp32": _runs(0.3, 0.03, seed=1),
                                                   "int8": _runs(0.6 if n == stem else 0.15, 0.03, seed=2),
                                                   "fp16": _runs(0.4, 0.03, seed=3)}) for n in names}

    monkeypatch.setattr("lowbit.target.layer_costs.measure_layer_costs", fake_costs)
    monkeypatch.setattr(selection.keep_float_for_speed, "__defaults__", (0.5,))
    r = lowbit.quantize(small_model_path, LATENCY, calib_arrays, verify=None)
    assert r.plan.nodes[stem].precision == "fp32"
    t = r.plan.decisions.layer_costs[stem]
    assert t["int8_ms"] == pytest.approx(0.6, rel=0.05) and t["fp32_ms"] == pytest.approx(0.3, rel=0.05)
    assert t["ratio_iqr"][0] > 1 + MARGIN and t["runs"] == 15
    # the saved plan carries them; the model file does not, and re-applying needs no timing
    r.plan.save(tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text())["config"]["layer_costs"][stem]["runs"] == 15
    assert plan_from_model(r.model).decisions.layer_costs is None
    monkeypatch.setattr("lowbit.target.layer_costs.measure_layer_costs", lambda *a, **k: pytest.fail("measured"))
    again = lowbit.quantize(small_model_path, LATENCY, plan=tmp_path / "plan.json", verify=None)
    assert again.model.SerializeToString() == r.model.SerializeToString()
    assert again.plan.nodes[stem].precision == "fp32"


# --- (d) a corrupt or hostile cache is ignored with a warning, rebuilt, never trusted --------------

CORRUPT = {
    "truncated": lambda good: good[: len(good) // 2],
    "list": lambda good: "[1, 2, 3]",
    "v1-shape": lambda good: json.dumps({"0123456789abcdef0123": [0.1, 0.2, 0.3]}),
    "nan": lambda good: _edit_first(good, lambda e: e["int8"].__setitem__(0, float("nan"))),
    "negative": lambda good: _edit_first(good, lambda e: e["int8"].__setitem__(0, -1.0)),
    "string": lambda good: _edit_first(good, lambda e: e["fp32"].__setitem__(0, "0.1")),
    "bool": lambda good: _edit_first(good, lambda e: e["fp32"].__setitem__(0, True)),
    "huge": lambda good: _edit_first(good, lambda e: e["int8"].__setitem__(0, 1e300)),
    "infinity": lambda good: _edit_first(good, lambda e: e["fp32"].__setitem__(0, float("inf"))),
    "zero-int8": lambda good: _edit_first(good, lambda e: e["int8"].__setitem__(0, 0.0)),
    "unequal-runs": lambda good: _edit_first(good, lambda e: e["int8"].pop()),
    "extra-key": lambda good: _edit_first(good, lambda e: e.__setitem__("int4", [0.1])),
    "bad-key": lambda good: good.replace('"entries":{"', '"entries":{"../', 1),
    "long-int": lambda good: _edit_first(good, lambda e: e["fp32"].__setitem__(0, "INT")).replace('"INT"', "9" * 5000),
    "deep": lambda good: "[" * 100_000 + "]" * 100_000,
    "garbage-5mb": lambda good: "{" + "x" * (5 << 20),
    "binary": lambda good: bytes(range(256)) * 4096,
    "empty": lambda good: "",
    "too-many-entries": lambda good: json.dumps({**json.loads(good), "entries": {
        f"{i:020x}": next(iter(json.loads(good)["entries"].values())) for i in range(layer_cost_cache.MAX_ENTRIES + 1)}}),
}


def _edit_first(good: str, edit) -> str:
    d = json.loads(good)
    edit(next(iter(d["entries"].values())))
    return json.dumps(d)


@pytest.fixture(scope="module")
def prepared_small(small_model_path):
    return prepare(load_model(small_model_path)).proto


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_cache_is_ignored_with_a_warning_and_rebuilt(kind, prepared_small, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    fresh = measure_layer_costs(prepared_small, runs=3)
    good = layer_cost_cache.cache_path().read_text()
    bad = CORRUPT[kind](good)
    path = layer_cost_cache.cache_path()
    path.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        costs = measure_layer_costs(prepared_small, runs=3)
    assert any("ignoring the layer-cost cache" in r.getMessage() for r in caplog.records), kind
    assert costs.keys() == fresh.keys()
    for c in costs.values():  # measured again: every time a positive finite number
        assert all(math.isfinite(t) and t > 0 for t in c.fp32_runs + c.int8_runs + c.fp16_runs)
    entries, rejected = layer_cost_cache.load_cache(path)  # rewritten valid
    assert not rejected and len(entries) == len(fresh)


def test_valid_cache_is_reused_exactly(prepared_small, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    first = measure_layer_costs(prepared_small, runs=3)
    monkeypatch.setattr("lowbit.target.layer_costs._time", lambda *a, **k: pytest.fail("re-measured a cached layer"))
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        assert measure_layer_costs(prepared_small, runs=3) == first
    assert not caplog.records


def test_cache_write_failure_never_fails_the_run(prepared_small, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LOWBIT_CACHE", str(blocker))
    assert measure_layer_costs(prepared_small, runs=3)
    assert blocker.read_text() == "a file where the cache folder should be"


def test_cache_path_that_is_a_folder_is_left_alone(prepared_small, tmp_path, monkeypatch, caplog):
    (tmp_path / "layer_costs.json").mkdir()
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        assert measure_layer_costs(prepared_small, runs=3)
    assert (tmp_path / "layer_costs.json").is_dir()
    assert any("not a regular file" in r.getMessage() for r in caplog.records)


def test_cache_format_carries_version_and_runs(prepared_small, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    measure_layer_costs(prepared_small, runs=5)
    d = json.loads(layer_cost_cache.cache_path().read_text())
    assert d["format"] == "lowbit.layer_costs" and d["version"] == layer_cost_cache.VERSION
    for e in d["entries"].values():
        assert set(e) == {"fp32", "int8", "fp16"} and all(len(v) == 5 for v in e.values())


def test_corrupt_cache_does_not_stop_a_quantize_run(small_model_path, calib_arrays, tmp_path, monkeypatch, caplog):
    (tmp_path / "layer_costs.json").write_bytes(b"\x00\xff" * 1000)
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        r = lowbit.quantize(small_model_path, LATENCY, calib_arrays, verify=None)
    assert isinstance(r.model, onnx.ModelProto)
    assert any("ignoring the layer-cost cache" in rec.getMessage() for rec in caplog.records)


def test_plan_timings_check_accepts_what_selection_writes_and_names_bad_fields(prepared_small):
    from lowbit.target.latency_choice import check_plan_timings

    convs = [n.name for n in prepared_small.graph.node if n.op_type == "Conv"]
    slow = LayerCost.from_runs(convs[0], "Conv", {"fp32": _runs(0.3, 0.05, seed=1), "int8": _runs(0.6, 0.05, seed=2),
                                                  "fp16": _runs(0.5, 0.05, seed=3)})
    _, timings = keep_float_for_speed(prepared_small, {convs[0]: slow}, budget=1.0)
    assert timings and check_plan_timings(json.loads(json.dumps(timings))) is None
    assert "object" in check_plan_timings([1, 2])
    assert "int8_ms" in check_plan_timings({"a": {"int8_ms": float("nan")}})
    assert "unknown field" in check_plan_timings({"a": {"rm -rf": 1}})
    assert "ratio_iqr" in check_plan_timings({"a": {"ratio_iqr": [1.0]}})
