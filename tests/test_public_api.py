"""The public surface is listed, importable and typed."""

from __future__ import annotations

from pathlib import Path

import lowbit

EXPECTED = {
    "quantize", "evaluate", "make_plan", "preset", "as_feeds", "QuantConfig", "Scheme", "PerTensor", "PerChannel",
    "PerGroup", "QDtype", "int8", "uint8", "int4", "uint4", "CalibrationMethod", "MinMax", "CALIBRATIONS", "PRESETS",
    "ImagePreprocess", "VerifyOptions", "QuantResult", "QuantPlan", "TensorPlan", "NodePlan", "QParams", "Report",
    "Batch", "FeedSource", "InputSpec", "LowbitError", "ConfigError", "DataError", "ModelError", "OutputError",
    "__version__",
}


def test_public_surface_is_exactly_listed():
    assert set(lowbit.__all__) == EXPECTED
    for name in lowbit.__all__:
        assert hasattr(lowbit, name), name


def test_py_typed_is_shipped():
    assert (Path(lowbit.__file__).parent / "py.typed").is_file()


def test_every_public_callable_has_a_docstring():
    for name in lowbit.__all__:
        obj = getattr(lowbit, name)
        if callable(obj) and not isinstance(obj, type(lowbit.int8)):
            assert obj.__doc__, f"lowbit.{name} has no docstring"


def test_presets_build():
    for name in lowbit.PRESETS:
        assert lowbit.preset(name).precision in ("int8", "int4", "fp16", "int8-dynamic")
