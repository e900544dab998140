"""`prepare`: a model plus calibration data -> a trainable module with fake quantization, its ranges
initialised from the PTQ plan lowbit would ship for the same model and config.

The module is the plan's own float graph (`QATGraph`): the torch model is exported to ONNX and
prepared exactly as `lowbit.quantize` does (BatchNorm folded into the convolutions, Jacob et al.
2018), calibrated into a `QuantPlan`, and that graph is trained. So each learned step size *is* a
TensorPlan's scale, and `lowbit.qat.export` ships the result through the same emitter as PTQ.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx

from lowbit.config import QuantConfig
from lowbit.data import as_feeds
from lowbit.errors import ConfigError, ModelError
from lowbit.load.model import load_model
from lowbit.load.prepare import prepare as prepare_onnx
from lowbit.plan.calibrate import calibrate
from lowbit.plan.quant_plan import QuantPlan
from lowbit.presets import as_config, resolve_transformer
from lowbit.progress import Progress, null_progress
from lowbit.qat.bn import BN_MODES, reintroduce_batchnorm
from lowbit.qat.graph import QATGraph

log = logging.getLogger(__name__)


def _example_from(calib_data: Any) -> Any:
    """A one-sample example input taken from array-like calibration data, for the ONNX export."""
    import torch

    if isinstance(calib_data, torch.Tensor):
        return calib_data[:1]
    if isinstance(calib_data, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(calib_data[:1]))
    return None


def prepare(model: Any, config: QuantConfig | str = "int8", calib_data: Any = None, *,
            example_inputs: Any = None, preprocess: Any = None, calib_limit: int | None = None,
            learn_scales: bool = True, bn: str = "fold", freeze_bn_after: int | None = None,
            progress: Progress = null_progress) -> QATGraph:
    """A trainable fake-quantized copy of `model` (torch.nn.Module, ONNX path or ModelProto).

    Ranges start from the PTQ plan computed on `calib_data` with `config` (a QuantConfig or a
    preset name; e.g. 4-bit weights: `QuantConfig(weights=Scheme(int4, PerChannel(0)))`).
    `learn_scales`: learn step sizes with LSQ (Esser et al. 2020), else keep the plan's.
    `bn`: 'fold' (default) trains with BatchNorm folded into the convolution using its running
    statistics; 'batch' re-introduces batch-statistics BN on the folded convolutions, folded into
    the quantized weights per step and frozen after `freeze_bn_after` steps (Jacob et al. 2018).

    >>> qat = lowbit.qat.prepare(cnn, "int8", x_train[:512])            # doctest: +SKIP
    >>> lowbit.qat.fit(qat, train_loader, epochs=1, lr=1e-4)             # doctest: +SKIP
    >>> lowbit.qat.export(qat, x_train[:1], "cnn.qat.onnx")              # doctest: +SKIP
    """
    cfg = as_config(config)
    if cfg.precision != "int8":
        raise ConfigError(f"QAT trains integer grids: precision must be 'int8' (static QDQ); got '{cfg.precision}'.")
    if bn not in BN_MODES:
        raise ConfigError(f"bn must be one of {BN_MODES}; got '{bn}'.")
    if bn == "batch" and (freeze_bn_after is None or freeze_bn_after < 0):
        raise ConfigError("bn='batch' needs freeze_bn_after (steps of batch statistics before freezing, e.g. 200).")
    if calib_data is None:
        raise ConfigError("QAT starts from a calibrated plan: give calib_data (a few hundred training inputs).")
    if example_inputs is None and not isinstance(model, (str, onnx.ModelProto)) and hasattr(model, "parameters"):
        example_inputs = _example_from(calib_data)
        if example_inputs is None:
            raise ModelError("a torch model needs example_inputs (one batch of the input shape) to be traced; "
                             "or pass calib_data as a tensor / array.")
    loaded = load_model(model, example_inputs)
    prepared = prepare_onnx(loaded)
    calib = as_feeds(calib_data, prepared.inputs, preprocess=preprocess, limit=calib_limit, batch_size=64)
    c = calibrate(prepared.proto, resolve_transformer(cfg, prepared.proto), calib, progress)
    float_model, plan = c.model, c.plan
    return from_plan(float_model, plan, learn_scales=learn_scales, bn=bn, freeze_bn_after=freeze_bn_after,
                     calib=calib if bn == "batch" else None)


def from_plan(float_model: onnx.ModelProto, plan: QuantPlan, *, learn_scales: bool = True, bn: str = "fold",
              freeze_bn_after: int | None = None, calib: Any = None) -> QATGraph:
    """The trainable module of an existing (float model, plan) pair, e.g. from `lowbit.quantize`'s
    result (`result.float_model, result.plan`) or from `plan_from_qdq`."""
    if plan.precision != "int8":
        raise ConfigError(f"QAT trains static int8 plans; this plan is '{plan.precision}'.")
    qat = QATGraph(float_model, plan, learn_scales=learn_scales)
    if bn == "batch":
        reintroduce_batchnorm(qat, calib, freeze_bn_after or 0)
    return qat
