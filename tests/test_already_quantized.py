"""A model that is already quantized (ddddocr ships ONNX Runtime's quantize_dynamic output as
`common_old.onnx`) is refused with the reason, exit 2, nothing written: every preset used to write
the same model back and exit 0."""

from __future__ import annotations

import onnx
import pytest

import lowbit
from lowbit.cli.commands import main
from lowbit.errors import ModelError
from lowbit.load.quantized import quantized_weights


@pytest.fixture()
def ort_dynamic(small_model_path, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(small_model_path), str(out), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv", "Gemm", "MatMul"])
    return out


@pytest.mark.parametrize("preset", ["fp16", "int8", "int8-dynamic"])
def test_onnx_runtime_dynamic_output_is_refused_naming_its_operators(ort_dynamic, calib_arrays, tmp_path, capsys, preset):
    out = tmp_path / "again.onnx"
    args = ["quantize", str(ort_dynamic), "--precision", preset, "-o", str(out), "--no-verify"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already quantized" in err and "ConvInteger" in err and "FP32 model" in err
    assert not out.exists()


def test_lowbits_own_int8_output_is_refused(small_model_path, calib_arrays):
    q = lowbit.quantize(small_model_path, "int8-fast", calib_arrays, verify=None).model
    with pytest.raises(ModelError, match="already quantized.*DequantizeLinear"):
        lowbit.quantize(q, "int8-fast", calib_arrays, verify=None)


def test_float_and_quantized_shares(small_model_path, ort_dynamic):
    integer, total, ops = quantized_weights(onnx.load(str(small_model_path)))
    assert integer == 0 and not ops
    integer, total, ops = quantized_weights(onnx.load(str(ort_dynamic)))
    assert integer >= 0.5 * total and ops["ConvInteger"] == 3  # weights and zero points, each node once


def test_a_partly_quantized_model_goes_on(small_model_path, calib_arrays, tmp_path):
    """One small layer already in ConvInteger: the float rest is quantized, that layer left as it is."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    m = onnx.load(str(small_model_path))
    one = [n.name for n in m.graph.node if n.op_type == "Conv"][1]  # the depthwise 3x3: 144 of ~1,000 weights
    partial = tmp_path / "partial.onnx"
    quantize_dynamic(str(small_model_path), str(partial), weight_type=QuantType.QUInt8, nodes_to_quantize=[one])
    integer, total, ops = quantized_weights(onnx.load(str(partial)))
    assert 0 < integer < 0.5 * total and ops == {"ConvInteger": 1}
    q = lowbit.quantize(partial, "int8-fast", calib_arrays, verify=None).model
    assert {"ConvInteger", "DequantizeLinear"} <= {n.op_type for n in q.graph.node}


@pytest.mark.slow
def test_ddddocrs_shipped_quantized_recognizer_is_refused(tmp_path, capsys):
    from benchmarks.zoo import models

    if not (models.cache_dir() / "wheels").is_dir():
        pytest.skip("zoo wheels not fetched: run bash scripts/setup_zoo.sh")
    model = tmp_path / "common_old.onnx"
    model.write_bytes(models.wheel_member("ddddocr==1.5.6", "ddddocr/common_old.onnx"))
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(model), "--precision", "fp16", "-o", str(out), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert "already quantized" in err and "21 ConvInteger, 1 DynamicQuantizeLSTM, 1 MatMulInteger" in err
    assert not out.exists()
