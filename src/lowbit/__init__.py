"""lowbit: quantize trained FP32 networks to FP16 / INT8 ONNX, with proof.

>>> import lowbit
>>> result = lowbit.quantize("mobilenet_v2.onnx", "int8", "calib/", output="mbv2.int8.onnx",
...                          preprocess=lowbit.ImagePreprocess.imagenet())
>>> print(result.report)
"""

__version__ = "0.1.0"
"""The version of this lowbit."""

from lowbit.api import QuantResult, VerifyOptions, evaluate, make_plan, quantize  # noqa: E402
from lowbit.calibration import CALIBRATIONS, CalibrationMethod, MinMax  # noqa: E402
from lowbit.config import PRESETS, QuantConfig, Scheme, preset  # noqa: E402
from lowbit.core import (PerChannel, PerGroup, PerTensor, QDtype, QParams, int4, int8, uint4,  # noqa: E402
                         uint8)
from lowbit.data import Batch, FeedSource, ImagePreprocess, InputSpec, as_feeds  # noqa: E402
from lowbit.errors import ConfigError, DataError, LowbitError, ModelError, OutputError  # noqa: E402
from lowbit.plan import NodePlan, QuantPlan, TensorPlan  # noqa: E402
from lowbit.report import Report  # noqa: E402

__all__ = [
    "__version__",
    # verbs
    "quantize", "evaluate", "make_plan", "preset", "as_feeds",
    # configuration
    "QuantConfig", "Scheme", "PerTensor", "PerChannel", "PerGroup", "QDtype", "int8", "uint8", "int4", "uint4",
    "CalibrationMethod", "MinMax", "CALIBRATIONS", "PRESETS", "ImagePreprocess", "VerifyOptions",
    # results
    "QuantResult", "QuantPlan", "TensorPlan", "NodePlan", "QParams", "Report", "Batch", "FeedSource", "InputSpec",
    # errors
    "LowbitError", "ConfigError", "DataError", "ModelError", "OutputError",
]

import lowbit.transformers.metrics  # noqa: E402,F401  (registers nn-preserved, worst-cosine)
