"""Every bad input of the foundation issue gets a specific lowbit error, no traceback from a
library, nothing half-written, and the input untouched."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import lowbit
from lowbit.errors import ConfigError, DataError, ModelError, OutputError


def _quantize(model, data, out=None, **kw):
    return lowbit.quantize(model, kw.pop("config", "int8"), data, output=out, verify=None, **kw)


def assert_no_output(tmp_path, name="out.onnx"):
    assert not (tmp_path / name).exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_missing_file(tmp_path, calib_arrays):
    with pytest.raises(ModelError, match="not found"):
        _quantize(tmp_path / "nope.onnx", calib_arrays, tmp_path / "out.onnx")
    assert_no_output(tmp_path)


def test_not_onnx(tmp_path, calib_arrays):
    bad = tmp_path / "photo.onnx"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(ModelError, match="not an ONNX model"):
        _quantize(bad, calib_arrays, tmp_path / "out.onnx")
    assert_no_output(tmp_path)


def test_truncated_model(tmp_path, small_model_path, calib_arrays):
    cut = tmp_path / "cut.onnx"
    data = small_model_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated|corrupt|checker|not an ONNX"):
        _quantize(cut, calib_arrays, tmp_path / "out.onnx")
    assert cut.read_bytes() == data[: len(data) // 2]
    assert_no_output(tmp_path)


def test_model_failing_the_checker(tmp_path, small_model_path, calib_arrays):
    m = onnx.load(str(small_model_path))
    m.graph.node[0].input[0] = "no_such_tensor"
    path = tmp_path / "broken.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(ModelError, match="no_such_tensor.*nothing produces"):
        _quantize(path, calib_arrays, tmp_path / "out.onnx")


def test_old_opset(tmp_path, calib_arrays):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 11)])
    path = tmp_path / "old.onnx"
    path.write_bytes(m.SerializeToString())
    # opsets 7-12 are raised to 13 by ONNX's version converter (outputs checked unchanged)
    from lowbit.load.model import load_model, opset_of

    assert opset_of(load_model(path).proto) == 13
    # older ones, which the converter has no adapters for, are refused naming both opsets
    m.opset_import[0].version = 5
    m.ir_version = 3
    path.write_bytes(m.SerializeToString())
    with pytest.raises(ModelError, match="opset 5.*13"):
        _quantize(path, [np.zeros((1, 4), np.float32)])


def test_wrong_input_name(small_model_path):
    with pytest.raises(DataError, match="input"):
        _quantize(small_model_path, [{"image": np.zeros((1, 3, 32, 32), np.float32)}])


@pytest.mark.parametrize("array,pattern", [
    (np.zeros((1, 3, 16, 16), np.float32), "16|32"),            # wrong fixed dims
    (np.zeros((1, 1, 3, 32, 32), np.float32), "rank|dimensions|dims"),  # wrong rank
    (np.zeros((1, 3, 32, 32), np.int32), "dtype|int"),           # wrong dtype kind
])
def test_wrong_shape_rank_dtype(small_model_path, array, pattern):
    with pytest.raises(DataError, match=pattern):
        _quantize(small_model_path, [array])


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_in_calibration_data(small_model_path, calib_arrays, value):
    bad = [a.copy() for a in calib_arrays[:3]]
    bad[1][0, 0, 0] = value
    with pytest.raises(DataError, match="NaN|Inf|finite"):
        _quantize(small_model_path, bad)


def test_empty_calibration_data(small_model_path, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no samples|empty"):
        _quantize(small_model_path, [])
    with pytest.raises(DataError, match="no samples|empty"):
        _quantize(small_model_path, tmp_path / "empty")


def test_missing_calibration_data_for_static_int8(small_model_path):
    with pytest.raises(DataError, match="calibration data"):
        _quantize(small_model_path, None)


def test_unknown_precision_says_did_you_mean(small_model_path, calib_arrays):
    with pytest.raises(ConfigError, match="Did you mean 'int8'"):
        _quantize(small_model_path, calib_arrays, config="int9")
    with pytest.raises(ConfigError, match="Did you mean"):
        lowbit.QuantConfig(precision="fp61")


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ConfigError, match="target"):
        lowbit.QuantConfig(target="avx9")
    with pytest.raises(ConfigError, match="PerTensor"):
        lowbit.QuantConfig(activations=lowbit.Scheme(lowbit.uint8, lowbit.PerChannel(1), symmetric=False))


def test_unwritable_output(small_model_path, calib_arrays, tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        _quantize(small_model_path, calib_arrays, tmp_path / "no" / "dir" / "out.onnx")
    with pytest.raises(OutputError, match="folder"):
        _quantize(small_model_path, calib_arrays, tmp_path)
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(OutputError, match="permission"):
            _quantize(small_model_path, calib_arrays, ro / "out.onnx")


def test_failed_run_keeps_previous_output(small_model_path, calib_arrays, tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(DataError):
        _quantize(small_model_path, [np.full((1, 3, 32, 32), np.nan, np.float32)], out)
    assert out.read_bytes() == b"previous"
    assert_no_output(tmp_path, name="nothing-else")


def test_corrupt_name_bytes_are_a_model_error(small_model_path, tmp_path):
    """A bit flip inside a node name leaves bytes that are not UTF-8: named as corruption, not a
    UnicodeDecodeError from protobuf later (found by the loader fuzz test)."""
    raw = bytearray(small_model_path.read_bytes())
    name = onnx.load(str(small_model_path)).graph.node[0].name.encode()
    raw[raw.index(name)] ^= 0x80
    path = tmp_path / "bad_name.onnx"
    path.write_bytes(bytes(raw))
    from lowbit.load.model import load_model

    with pytest.raises(lowbit.ModelError, match="not valid UTF-8"):
        load_model(path)


def test_packed_4bit_tensors_are_counted_as_packed():
    """INT4 values stored in int32_data hold two per entry (what lowbit's own w4a8 files contain):
    the size check counts them so, and still catches a tensor that holds too few."""
    from onnx import TensorProto, helper

    from lowbit.load.checks import check_tensor_sizes

    good = helper.make_tensor("w", TensorProto.INT4, [3, 144], np.ones(432, np.int8).tolist())
    assert len(good.int32_data) == 216
    check_tensor_sizes(helper.make_graph([], "g", [], [], [good]), "m.onnx")
    short = helper.make_tensor("w", TensorProto.INT4, [3, 144], np.ones(432, np.int8).tolist())
    del short.int32_data[100:]
    with pytest.raises(ModelError, match=r"declares 432 elements \(216 packed entries\) but holds 100"):
        check_tensor_sizes(helper.make_graph([], "g", [], [], [short]), "m.onnx")


def test_huge_dims_with_a_zero_are_counted_exactly():
    """The fuzzer's find: dims whose float product overflows to inf times a 0 gave NaN and a raw
    ValueError; counted exactly, such a tensor holds 0 elements and its data must be empty."""
    from onnx import TensorProto, helper

    from lowbit.load.checks import check_tensor_sizes

    def declared(dims: list[int]) -> TensorProto:  # as a hostile file carries it: no helper's own check
        t = TensorProto(name="w", data_type=TensorProto.FLOAT)
        t.dims.extend(dims)
        return t

    check_tensor_sizes(helper.make_graph([], "g", [], [], [declared([2**62] * 20 + [0])]), "m.onnx")
    huge = declared([2**62] * 20)
    with pytest.raises(ModelError, match="far beyond any real model"):
        check_tensor_sizes(helper.make_graph([], "g", [], [], [huge]), "m.onnx")
