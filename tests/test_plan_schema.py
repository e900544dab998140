"""The plan schema, on dicts: every field of a plan is checked like user input, and the first bad one
is named by its JSON path. Fast: no model is quantized here except the one good plan per module."""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import re
import zlib

import numpy as np
import pytest

import lowbit
from lowbit.search.checkpoint import SCHEMA as CHECKPOINT_SCHEMA
from lowbit.search.checkpoint import load_checkpoint, save_checkpoint
from lowbit.errors import ConfigError, ModelError
from lowbit.load.model import load_model
from lowbit.plan.quant_plan import QuantPlan
from lowbit.plan.fit import check_plan_fits, plan_size_limit
from lowbit.plan.schema import MAX_SCALE, MIN_SCALE, check_plan_dict
from lowbit.load.prepare import prepare

ACT = "/pw/pw.0/Conv_output_0"  # an activation of conftest's SmallConvNet
W = "onnx::Conv_41"              # the stem conv's weight (16 output channels)
B = "onnx::Conv_42"              # its int32 bias


@pytest.fixture(scope="module")
def good(small_model_path, calib_arrays) -> dict:
    # pinned to the VNNI grid (full 8-bit weights) so the zero-point bounds below hold on every CPU
    config = lowbit.preset("int8-fast").with_(target="vnni")
    return lowbit.quantize(small_model_path, config, calib_arrays, verify=None).plan.to_dict()


@pytest.fixture(scope="module")
def prepared(small_model_path):
    return prepare(load_model(small_model_path)).proto


def _set(d: dict, path: tuple, value) -> dict:
    d = copy.deepcopy(d)
    x = d
    for p in path[:-1]:
        x = x[p]
    if value is _DEL:
        del x[path[-1]]
    else:
        x[path[-1]] = value
    return d


_DEL = object()
NAN, INF = float("nan"), float("inf")

# (path to change, new value, the JSON path the message must name, words of the rule)
BAD_FIELDS = [
    (("tensors", W, "scale", 3), NAN, f'plan.tensors["{W}"].scale[3] is nan', "finite and positive"),
    (("tensors", W, "scale", 0), -0.5, f'plan.tensors["{W}"].scale[0] is -0.5', "finite and positive"),
    (("tensors", ACT, "scale"), 0.0, f'plan.tensors["{ACT}"].scale is 0.0', "finite and positive"),
    (("tensors", ACT, "scale"), INF, f'plan.tensors["{ACT}"].scale is inf', "finite and positive"),
    (("tensors", ACT, "scale"), -INF, f'plan.tensors["{ACT}"].scale is -inf', "finite and positive"),
    (("tensors", ACT, "scale"), 1e38, "scale is 1e+38", "between 1e-30 and 1e+28"),
    (("tensors", ACT, "scale"), 1e-45, "scale is 1e-45", "between 1e-30 and 1e+28"),
    (("tensors", ACT, "scale"), 3e-39, "scale is 3e-39", "between"),  # float32 subnormal
    (("tensors", ACT, "scale"), 10**400, "scale is", "at most"),
    (("tensors", ACT, "scale"), "0.1", "scale is '0.1'", "number"),
    (("tensors", ACT, "scale"), True, "scale is True", "number"),
    (("tensors", ACT, "scale"), [0.1], "scale is a list", "one number"),
    (("tensors", W, "scale"), [], f'plan.tensors["{W}"].scale is a list with 0 entries', "non-empty"),
    (("tensors", W, "scale"), [[0.1]] * 16, "scale is a list", "flat list"),
    (("tensors", W, "scale", 5), None, "scale[5] is None", "numbers"),
    (("tensors", ACT, "zero_point"), 256, f'plan.tensors["{ACT}"].zero_point is 256', "between 0 and 255"),
    (("tensors", ACT, "zero_point"), -1, "zero_point is -1", "between 0 and 255"),
    (("tensors", ACT, "zero_point"), 12.5, "zero_point is 12.5", "integers"),
    (("tensors", ACT, "zero_point"), 10**30, "zero_point is", "between 0 and 255"),
    (("tensors", W, "zero_point", 2), -128, "zero_point[2] is -128", "between -127 and 127"),  # narrow int8
    (("tensors", W, "zero_point", 2), 128, "zero_point[2] is 128", "between -127 and 127"),
    (("tensors", B, "zero_point", 1), 7, f'plan.tensors["{B}"].zero_point[1] is 7', "bias's zero point is 0"),
    (("tensors", W, "zero_point"), [0] * 15, "zero_point is a list", "same shape as scale"),
    (("tensors", W, "zero_point"), _DEL, "zero_point is missing", "zero point"),
    (("tensors", ACT, "dtype"), "int16", "dtype is 'int16'", "uint8 or int8"),
    (("tensors", ACT, "dtype"), "int32", "dtype is 'int32'", "uint8 or int8"),
    (("tensors", ACT, "dtype"), "uint4", "dtype is 'uint4'", "uint8 or int8"),
    (("tensors", W, "dtype"), "int16", f'plan.tensors["{W}"].dtype is \'int16\'', "2 to 8 bits"),
    (("tensors", W, "dtype"), "int32", "dtype is 'int32'", "2 to 8 bits"),
    (("tensors", B, "dtype"), "int8", "dtype is 'int8'", "int32"),
    (("tensors", W, "dtype"), "float8", "dtype is 'float8'", "integer grid"),
    (("tensors", W, "dtype"), 8, "dtype is 8", "integer grid"),
    (("tensors", W, "role"), "gradient", "role is 'gradient'", "weight, bias or activation"),
    (("tensors", ACT, "granularity"), {"kind": "per_channel", "axis": 0}, "granularity.kind", "per_tensor"),
    (("tensors", W, "granularity", "kind"), "per_row", "kind is 'per_row'", "per_tensor, per_channel or per_group"),
    (("tensors", W, "granularity", "axis"), 0.0, "axis is 0.0", "integer axis"),
    (("tensors", W, "granularity", "axis"), 99, "axis is 99", "between -8 and 7"),
    (("tensors", W, "granularity", "stride"), 2, "granularity.stride is not a field", "Choices"),
    (("tensors", W, "granularity"), "per_channel", "granularity is 'per_channel'", "JSON object"),
    (("tensors", W, "narrow"), "yes", "narrow is 'yes'", "true or false"),
    (("tensors", W, "range"), [1.0, -1.0], "range is a list", "low <= high"),
    (("tensors", W, "range"), [0, NAN], "range is a list", "finite"),
    (("tensors", W, "method"), "x" * 5000, "method is", "at most"),
    (("tensors", W, "sclae"), 1.0, f'plan.tensors["{W}"].sclae is not a field', "Did you mean 'scale'"),
    (("tensors", W), [1, 2], f'plan.tensors["{W}"] is a list', "JSON object"),
    (("nodes", "/Add", "precision"), "banana", 'plan.nodes["/Add"].precision is \'banana\'', "int8, int8-block"),
    (("nodes", "/Add", "precision"), "int8-dynamic", "precision is 'int8-dynamic'", "one of"),
    (("nodes", "/Add", "precision"), "folded", "precision is 'folded'", "plan.folded"),
    (("nodes", "/Add", "op"), 3, 'plan.nodes["/Add"].op is 3', "string"),
    (("nodes", "/Add", "op"), _DEL, 'plan.nodes["/Add"].op is missing', "op type"),
    (("nodes", "/Add", "reason"), ["x"], "reason is a list", "string"),
    (("nodes", "/Add", "speed"), 1, 'plan.nodes["/Add"].speed is not a field', "Choices"),
    (("nodes",), [1, 2], "plan.nodes is a list", "JSON object"),
    (("nodes",), _DEL, "plan.nodes is missing", "nodes"),
    (("tensors",), None, "plan.tensors is None", "JSON object"),
    (("precision",), "banana", "plan.precision is 'banana'", "int8, int8-dynamic, fp16, int4"),
    (("observed", "output"), [2.0, 1.0], 'plan.observed["output"] is a list', "low <= high"),
    (("observed", "output"), "wide", 'plan.observed["output"] is \'wide\'', "two numbers"),
    (("folded", "/stem/stem.2/Clip"), 5, 'plan.folded["/stem/stem.2/Clip"] is 5', "string"),
    (("extra",), 1, "plan.extra is not a field", "Choices"),
    (("lowbit_version",), 1.0, "plan.lowbit_version is 1.0", "string"),
    (("config", "wieghts"), 1, "plan.config.wieghts is not a field", "Did you mean 'weights'"),
    (("config", "precision"), "fp16", "plan.config.precision is 'fp16'", "match"),
    (("config", "objective"), "speed", "plan.config.objective is 'speed'", "'latency' or 'size'"),
    (("config", "target"), "cray", "plan.config.target is 'cray'", "target is one of"),
    (("config", "seed"), "0", "plan.config.seed is '0'", "integer"),
    (("config", "keep_float"), "/head/*", "plan.config.keep_float is", "list of strings"),
    (("config", "weights", "dtype"), "int99", "plan.config.weights is an object", "scheme"),
    (("config", "activations", "calibration"), {"name": "magic"}, "plan.config.activations", "magic"),
    (("config", "algorithms"), [{"name": "alchemy"}], "plan.config.algorithms[0]", "alchemy"),
    (("config", "algorithms"), [{"speed": 1}], "plan.config.algorithms[0]", "missing"),
    (("config", "layer_costs"), {"/Add": {"fp32_ms": NAN}}, "plan.config.layer_costs", "finite"),
    (("config", "keep_float"), ["x" * 100] * 20000, "plan.config is an object", "metadata"),
]


@pytest.mark.parametrize("path, value, where, rule", BAD_FIELDS,
                         ids=[f"{'.'.join(map(str, c[0]))}={str(c[1])[:20]}" for c in BAD_FIELDS])
def test_bad_field_is_named_by_its_json_path(good, path, value, where, rule):
    bad = _set(good, path, value)
    with pytest.raises(ConfigError) as e:
        QuantPlan.from_dict(bad)
    msg = str(e.value)
    assert where in msg and rule in msg, msg
    assert len(msg) < 700 and "\n" not in msg  # one paragraph, not a dump of the plan


@pytest.mark.parametrize("d", [[], None, "plan", 3, {"schema": "lowbit.plan/0"}, {"nodes": {}}],
                         ids=["list", "null", "string", "number", "old-schema", "no-schema"])
def test_not_a_plan_object(d):
    with pytest.raises(ConfigError, match="JSON object|not a lowbit plan"):
        QuantPlan.from_dict(d)


def test_good_plans_pass_and_round_trip(good, small_model_path, calib_arrays, prepared):
    check_plan_dict(good)
    again = QuantPlan.from_json(json.dumps(good))
    assert again.to_dict() == good
    check_plan_fits(again, prepared)
    # 4-bit weights (w4a8) and the compact form a model's metadata keeps pass as well
    w4 = lowbit.quantize(small_model_path, "w4a8", calib_arrays, verify=None)
    check_plan_dict(w4.plan.to_dict())
    assert lowbit.emit.metadata.plan_from_model(w4.model).to_json() == w4.plan.to_json()


def test_scale_bounds_are_usable_in_float32():
    """The bounds' own justification: x / MIN_SCALE stays finite for |x| <= 1e8, and an int32
    bias's full range times MAX_SCALE stays below float32's largest number."""
    with np.errstate(over="raise"):
        assert np.isfinite(np.float32(1e8) / np.float32(MIN_SCALE))
        assert np.isfinite(np.float32(2.0**32) * np.float32(MAX_SCALE))
    assert np.float32(MIN_SCALE) >= np.finfo(np.float32).tiny  # a normal float32


def test_plan_object_is_checked_when_passed_to_quantize(good, small_model_path):
    plan = QuantPlan.from_dict(good)
    plan.tensors[ACT].qparams.scale[...] = np.nan
    with pytest.raises(ConfigError, match=re.escape(f'plan.tensors["{ACT}"].scale is nan')):
        lowbit.quantize(small_model_path, "int8", plan=plan, verify=None)
    with pytest.raises(ConfigError, match="QuantPlan, a dict or the path"):
        lowbit.quantize(small_model_path, "int8", plan=[1, 2], verify=None)


# (change, the words the message must hold)
MISFITS = [
    (("nodes", "/nope/Conv"), {"op": "Conv", "precision": "int8"}, 'plan.nodes["/nope/Conv"] is not'),
    (("tensors", "nope"), "copy:" + ACT, 'plan.tensors["nope"] is not a tensor of this model'),
    (("observed", "nope"), [0.0, 1.0], 'plan.observed["nope"] is not a tensor'),
    (("nodes", "/Add", "op"), "Mul", 'plan.nodes["/Add"].op is \'Mul\', but that node is a Add'),
    (("tensors", W, "granularity", "axis"), 1, f'plan.tensors["{W}"].scale has shape [16]'),
    (("tensors", W, "granularity", "axis"), 5, "has 4 dimensions"),
    (("tensors", "output"), "copy:" + ACT, None),  # graph output: fine (an activation)
    (("tensors", ACT), "copy:" + W, "weight plan, but the tensor is not a constant"),
    (("tensors", "/dw/dw.2/Constant_output_0"), "copy:" + W, "has 0 dimensions"),  # folded to a scalar
    (("folded", "/Add"), "/pw/pw.0/Conv", 'plan.folded["/Add"] is a Add, not a Relu or Clip'),
    (("folded", "/stem/stem.2/Clip"), "/Add", "not the node that computes"),
    (("nodes", "/head/Gemm", "precision"), "int8-block", "needs a per_group weight plan"),
]


@pytest.mark.parametrize("path, value, words", MISFITS, ids=[".".join(map(str, c[0])) for c in MISFITS])
def test_plan_must_fit_the_model(good, prepared, path, value, words):
    if isinstance(value, str) and value.startswith("copy:"):
        value = copy.deepcopy(good["tensors"][value[5:]])
    plan = QuantPlan.from_dict(_set(good, path, value))
    if words is None:
        check_plan_fits(plan, prepared)
        return
    with pytest.raises(ConfigError) as e:
        check_plan_fits(plan, prepared)
    assert words in str(e.value), str(e.value)


def test_entry_counts_relative_to_the_model(good, prepared):
    bogus = _set(good, ("observed",), {f"t{i}": [0.0, 1.0] for i in range(5000)})
    with pytest.raises(ConfigError, match=r"plan.observed has 5,000 entries, and the model has only \d+ tensors"):
        check_plan_fits(QuantPlan.from_dict(bogus), prepared)


def test_plan_file_size_is_limited_before_reading(good, prepared, tmp_path):
    p = tmp_path / "big.json"
    text = json.dumps(good)
    p.write_text(text + " " * 2000)
    with pytest.raises(ConfigError, match="MB, over the"):
        QuantPlan.load(p, max_bytes=len(text))
    assert plan_size_limit(prepared) < 64 << 20  # a small model's plan limit stays small


def test_plan_file_that_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "plan.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO"):
        QuantPlan.load(fifo)  # refused, not read forever
    with pytest.raises(ConfigError, match="folder"):
        QuantPlan.load(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        QuantPlan.load(tmp_path / "missing.json")


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00garbage\x89PNG", b"[[[[" * 100000, b'{"schema": ', b""],
                         ids=["binary", "deeply-nested", "truncated", "empty"])
def test_plan_text_that_is_not_json(raw, tmp_path):
    p = tmp_path / "plan.json"
    p.write_bytes(raw)
    with pytest.raises(ConfigError, match="plan is not valid JSON"):
        QuantPlan.load(p)


def test_damaged_plan_record_in_a_model_is_a_model_error(small_model_path, calib_arrays):
    from lowbit.emit.metadata import PLAN_KEY, plan_from_model

    r = lowbit.quantize(small_model_path, "int8-fast", calib_arrays, verify=None)
    bomb = zlib.compress(b" " * (200 << 20))  # 200 MB of spaces in 200 KB: over this model's plan limit
    for value in ("not base64!", "AAAA", base64.b64encode(zlib.compress(b"[1, 2]")).decode(),
                  base64.b64encode(bomb).decode()):
        m = copy.deepcopy(r.model)
        next(p for p in m.metadata_props if p.key == PLAN_KEY).value = value
        with pytest.raises(ModelError, match="plan record"):
            plan_from_model(m)


# --- the search checkpoint ---------------------------------------------------------------------

KEY = "ab" * 32


@pytest.mark.parametrize("content", [
    b"\x00\x01binary\xff", b"[1, 2, 3]", b"null", b'{"schema": "other/1", "scores": {}}',
    json.dumps({"schema": CHECKPOINT_SCHEMA, "scores": {"not-a-hash": [0.9, 30.0]}}).encode(),
    json.dumps({"schema": CHECKPOINT_SCHEMA, "scores": {KEY: ["0.9", 30.0]}}).encode(),
    json.dumps({"schema": CHECKPOINT_SCHEMA, "scores": {KEY: [0.9]}}).encode(),
    json.dumps({"schema": CHECKPOINT_SCHEMA, "scores": [KEY]}).encode(),
    b'{"' + KEY.encode() + b'": [0.9, NaN]}',
], ids=["binary", "list", "null", "foreign-schema", "bad-key", "string-score", "short-score", "scores-list",
        "nan-sqnr"])
def test_corrupt_checkpoint_is_ignored_with_a_warning(content, tmp_path, caplog):
    p = tmp_path / "search.json"
    p.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="lowbit.search.checkpoint"):
        assert load_checkpoint(p) == {}
    assert "search checkpoint" in caplog.text and "ignored" in caplog.text


def test_checkpoint_round_trip_and_legacy_form(tmp_path, caplog):
    p = tmp_path / "search.json"
    assert load_checkpoint(p) == {}  # no file yet: no warning
    assert save_checkpoint(p, {KEY: [0.5, float("inf")]})
    assert json.loads(p.read_text())["schema"] == CHECKPOINT_SCHEMA
    assert load_checkpoint(p) == {KEY: [0.5, float("inf")]}
    p.write_text(json.dumps({KEY: [0.25, 12.0]}))  # written before the file had a schema
    assert load_checkpoint(p) == {KEY: [0.25, 12.0]}
    assert "ignored" not in caplog.text


def test_checkpoint_on_a_device_is_neither_read_nor_replaced(caplog):
    from pathlib import Path

    dev = Path("/dev/null")
    with caplog.at_level(logging.WARNING, logger="lowbit.search.checkpoint"):
        assert load_checkpoint(dev) == {}
        assert not save_checkpoint(dev, {KEY: [0.5, 1.0]})
    assert dev.is_char_device()
    assert "not written" in caplog.text


def test_evaluator_rebuilds_a_corrupt_checkpoint(good, prepared, calib_arrays, tmp_path, caplog):
    from lowbit.search import PlanEvaluator
    from lowbit.data import as_feeds
    from lowbit.data.spec import specs_from_onnx

    p = tmp_path / "search.json"
    p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    plan = QuantPlan.from_dict(good)
    with caplog.at_level(logging.WARNING, logger="lowbit.search.checkpoint"):
        ev = PlanEvaluator(prepared, as_feeds(calib_arrays[:4], specs_from_onnx(prepared)), "cosine", checkpoint=p)
    assert "ignored" in caplog.text
    first = ev.score(plan)
    assert ev.evaluations == 1
    ev2 = PlanEvaluator(prepared, as_feeds(calib_arrays[:4], specs_from_onnx(prepared)), "cosine", checkpoint=p)
    assert ev2.score(plan) == first and ev2.evaluations == 0  # rebuilt: the rewritten file resumes


def test_plan_object_entries_are_named_by_their_keys(good):
    plan = QuantPlan.from_dict(good)
    plan.tensors["renamed"] = plan.tensors.pop(ACT)
    with pytest.raises(ConfigError, match=r'plan.tensors\["renamed"\] holds an entry named'):
        plan.check()
