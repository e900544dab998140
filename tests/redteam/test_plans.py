"""Red team: hand-edited, damaged or foreign plans given to `lowbit quantize --plan`. Each must end
in one clear message naming the bad field (exit 2), no traceback, no output file, inputs untouched;
before these checks they were accepted (a model of zeros, or one ONNX Runtime cannot load) or
crashed with a traceback."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from redteam_util import assert_clean_failure, assert_unchanged, run_cli, snapshot, temp_files

import lowbit

ACT = "/pw/pw.0/Conv_output_0"  # an activation of conftest's SmallConvNet
W = "onnx::Conv_41"              # a conv weight


@pytest.fixture(scope="module")
def good_plan(small_model_path, calib_arrays, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plans") / "plan.json"
    lowbit.quantize(small_model_path, "int8-fast", calib_arrays, verify=None).plan.save(path)
    return path


def _edit(plan: dict, path: tuple, value) -> dict:
    d = copy.deepcopy(plan)
    x = d
    for p in path[:-1]:
        x = x[p]
    x[path[-1]] = value
    return d


def _bogus_entries(plan: dict, n: int) -> bytes:
    """`plan` with n made-up observed tensors, written without building n Python objects twice."""
    head = json.dumps({k: v for k, v in plan.items() if k != "observed"})[:-1]
    body = ", ".join(f'"/bogus/{i}": [0, 1]' for i in range(n))
    return f'{head}, "observed": {{{body}}}}}'.encode()


# name: (how the plan file is made from the good plan's dict, what the message must say)
BAD = {
    "scale-nan": (lambda d: _edit(d, ("tensors", W, "scale", 3), float("nan")),
                  r'plan\.tensors\["onnx::Conv_41"\]\.scale\[3\] is nan: scales must be finite and positive'),
    "scale-zero": (lambda d: _edit(d, ("tensors", ACT, "scale"), 0.0), r'scale is 0\.0: scales must be finite'),
    "scale-inf": (lambda d: _edit(d, ("tensors", ACT, "scale"), float("inf")), r"scale is inf"),
    "scale-1e38": (lambda d: _edit(d, ("tensors", ACT, "scale"), 1e38), r"scale is 1e\+38: scales must be between"),
    "scale-1e-45": (lambda d: _edit(d, ("tensors", ACT, "scale"), 1e-45), r"scale is 1e-45: scales must be between"),
    "zero-point-out-of-range": (lambda d: _edit(d, ("tensors", ACT, "zero_point"), 300),
                                r"zero_point is 300: a uint8 zero point is between 0 and 255"),
    "int16-activation": (lambda d: _edit(d, ("tensors", ACT, "dtype"), "int16"), r"dtype is 'int16': activations"),
    "int32-weight": (lambda d: _edit(d, ("tensors", W, "dtype"), "int32"), r"dtype is 'int32': weights are 2 to 8"),
    "unknown-node": (lambda d: _edit(d, ("nodes", "/ghost/Conv"), {"op": "Conv", "precision": "int8"}),
                     r'plan\.nodes\["/ghost/Conv"\] is not'),
    "precision-banana": (lambda d: _edit(d, ("nodes", "/Add", "precision"), "banana"),
                         r"plan\.nodes\[\"/Add\"\]\.precision is 'banana'"),
    "1.6M-bogus-entries": (lambda d: _bogus_entries(d, 1_600_000), r"plan file .* MB, over the .* MB"),
    "empty-list": (lambda d: [], r"plan must be a JSON object .* list"),
    "null": (lambda d: None, r"plan must be a JSON object .* null"),
    "binary": (lambda d: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", r"plan is not valid JSON"),
    "nodes-as-list": (lambda d: _edit(d, ("nodes",), [{"op": "Conv"}]), r"plan\.nodes is a list .* JSON object"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_plan_is_refused_by_the_cli(case, good_plan, small_model_path, tmp_path):
    make, pattern = BAD[case]
    content = make(json.loads(good_plan.read_text()))
    bad = tmp_path / "bad.json"
    bad.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    out = tmp_path / "out.onnx"
    before = snapshot(small_model_path, bad)
    run = run_cli("quantize", small_model_path, "--plan", bad, "-o", out, "--no-verify", cwd=tmp_path)
    assert_clean_failure(run, pattern)
    assert not out.exists()
    assert not temp_files(tmp_path)
    assert_unchanged(before)


def test_bad_plan_leaves_an_earlier_output_as_it_was(good_plan, small_model_path, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_edit(json.loads(good_plan.read_text()), ("tensors", ACT, "scale"), float("nan"))))
    out = tmp_path / "out.onnx"
    out.write_bytes(b"an earlier, good output")
    before = snapshot(out)
    run = run_cli("quantize", small_model_path, "--plan", bad, "-o", out, "--no-verify", cwd=tmp_path)
    assert_clean_failure(run, "is nan")
    assert_unchanged(before)


def test_good_plan_round_trips_and_reapplies_byte_identically(good_plan, small_model_path, tmp_path):
    run = run_cli("quantize", small_model_path, "--plan", good_plan, "-o", tmp_path / "cli.onnx", "--no-verify",
                  cwd=tmp_path)
    assert run.rc == 0, run.text[-3000:]
    a = lowbit.quantize(small_model_path, "int8", plan=good_plan, output=tmp_path / "a.onnx", verify=None)
    b = lowbit.quantize(small_model_path, "int8", plan=lowbit.QuantPlan.load(good_plan), verify=None)
    assert a.plan.to_json() == lowbit.QuantPlan.load(good_plan).to_json() == b.plan.to_json()
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "cli.onnx").read_bytes()
