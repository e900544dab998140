"""Measured float choice (lowbit.search.float_choice): the layer whose INT8 error dominates the output is
found from calibration data alone and kept in float, within the weight budget; the others stay INT8."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from lowbit.api import make_plan
from lowbit.presets import preset
from lowbit.data import as_feeds, specs_from_onnx
from lowbit.search.float_choice import choose_float_layers, find_units
from lowbit.load.model import load_model
from lowbit.plan.quant_plan import TensorPlan
from lowbit.load.prepare import prepare

SHAPE = (1, 3, 16, 16)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()


@pytest.fixture(scope="module")
def planned():
    buf = io.BytesIO()
    torch.onnx.export(_net(), (torch.randn(*SHAPE),), buf, input_names=["x"], output_names=["y"], opset_version=13,
                      dynamo=False)
    model = prepare(load_model(onnx.load_from_string(buf.getvalue()))).proto
    rng = np.random.default_rng(0)
    calib = as_feeds([{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(16)], specs_from_onnx(model))
    cfg = preset("int8").with_(transformer=False, objective="size", algorithms=())
    model, plan = make_plan(prepare(load_model(model)), cfg, calib)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    # one layer's weights on a grid 40x too coarse: it alone dominates the output error
    bad = convs[2]
    w = plan.tensors[next(i for i in model.graph.node if i.name == bad).input[1]]
    plan.tensors[w.name] = TensorPlan(w.name, w.role, type(w.qparams)(w.qparams.dtype, w.qparams.granularity,
                                      w.qparams.scale * 40, w.qparams.zero_point, w.qparams.narrow), w.calibrated_range,
                                      w.method)
    return model, plan, calib, bad


def test_units_are_each_layer_with_its_epilogue(planned):
    model, plan, _, _ = planned
    units = find_units(model, plan)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert [ops[u.layer] for u in units] == ["Conv"] * 4
    assert all(ops[n] != "Conv" for u in units for n in u.nodes[1:])


def test_the_dominant_layer_is_ranked_first_and_kept_alone(planned):
    model, plan, calib, bad = planned
    out, record = choose_float_layers(model, plan, calib, budget=0.5, trials=1)
    assert record["trials"][0]["layer"] == bad and record["layers"] == [bad]
    assert record["sqnr_db"] > record["base_sqnr_db"] + 10  # the coarse grid cost more than 10 dB
    assert out.nodes[bad].precision == "fp16" and "float_choice" in out.nodes[bad].reason
    assert [n for n, p in out.nodes.items() if p.op == "Conv" and p.precision != "int8"] == [bad]
    assert plan.nodes[bad].precision == "int8"  # the base plan is not changed


def test_more_trials_keep_the_dominant_layer_and_only_clear_gains(planned):
    model, plan, calib, bad = planned
    _, record = choose_float_layers(model, plan, calib, budget=1.0, trials=4)
    assert record["layers"][0] == bad
    gains = [t["gain_db"] for t in record["trials"] if t["kept"]]
    assert all(g > record["margin_db"] for g in gains)
    # and closer on the inputs as a whole, not carried by a few (paired bootstrap lower bound above 0)
    assert all(t["gain_lower_bound_db"] > 0 for t in record["trials"] if t["kept"])


def test_the_weight_budget_bounds_the_choice(planned):
    model, plan, calib, bad = planned
    units = {u.layer: u.weights for u in find_units(model, plan)}
    share = units[bad] / sum(units.values())
    out, record = choose_float_layers(model, plan, calib, budget=share * 0.9, trials=4)
    assert bad not in record["layers"] and out.nodes[bad].precision == "int8"
    assert record["weight_share"] <= share * 0.9
