"""lowbit: quantize trained FP32 networks to FP16 / INT8 ONNX, with proof.

>>> import lowbit
>>> result = lowbit.quantize("mobilenet_v2.onnx", "int8", "calib/", output="mbv2.int8.onnx",
...                          preprocess=lowbit.ImagePreprocess.imagenet())
>>> print(result.report)
"""

import os

# Before anything imports torch: its OpenMP workers spin-wait after every parallel region for
# ~300k iterations by default. With a second process on the same 2 cores (another recovery, a
# test runner) a MobileNetV2 recovery step took 8.0 s instead of 0.85 s; with 10k iterations it
# took 1.9 s in the pair and 0.88 s alone (OMP_WAIT_POLICY=PASSIVE: 1.6 s, but 0.98 s alone).
# A value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from lowbit.api import QuantResult, VerifyOptions, evaluate, make_plan, quantize  # noqa: E402
from lowbit.calibration import CALIBRATIONS, CalibrationMethod, MinMax  # noqa: E402
from lowbit.config import QuantConfig, Scheme  # noqa: E402
from lowbit.core import PerChannel, PerGroup, PerTensor, QDtype, QParams, int4, int8, uint4, uint8  # noqa: E402
from lowbit.data import Batch, FeedSource, ImagePreprocess, InputSpec, as_feeds  # noqa: E402
from lowbit.errors import ConfigError, DataError, LowbitError, ModelError, OutputError  # noqa: E402
from lowbit.package import __version__
from lowbit.plan.quant_plan import NodePlan, QuantPlan, TensorPlan  # noqa: E402
from lowbit.presets import PRESETS, preset
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
