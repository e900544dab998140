"""Recover: label-free quantization-aware fine-tuning, distilling the FP32 model into its quantized plan.

>>> result = lowbit.quantize("mbv2.onnx", "int8", calib, recover=Recover("10m"))   # doctest: +SKIP
>>> result.plan.config["recover"]["held_out_after"]["top1_agreement"]              # doctest: +SKIP

After PTQ, the plan's own fake-quant graph (`lowbit.qat`) learns its weights and step sizes (LSQ,
Esser et al. 2020) to match the FP32 model's outputs (distillation, Hinton et al. 2015) on the
calibration data, augmented where it is images; a held-out slice of that data picks the state that
ships and stops training early. The result leaves through the same emitter as PTQ.
"""

from lowbit.extras import require

require("torch", "recover (fine-tuning the quantized plan)")

from lowbit.recover.options import Recover, parse_budget  # noqa: E402
from lowbit.recover.pipeline import check_recoverable, recover_plan  # noqa: E402

__all__ = ["Recover", "recover_plan", "check_recoverable", "parse_budget"]
