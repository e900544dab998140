"""Quantization-aware training: train with the plan's quantization noise, ship through the plan.

>>> import lowbit.qat
>>> qat = lowbit.qat.prepare(cnn, "int8", x_train[:512])                    # doctest: +SKIP
>>> lowbit.qat.fit(qat, train_loader, epochs=1, lr=1e-4, eval_data=test_loader)  # doctest: +SKIP
>>> lowbit.qat.export(qat, x_test[:256], "cnn.qat.onnx")                    # doctest: +SKIP

Fake quantization with straight-through gradients (Bengio et al. 2013), learned step sizes (LSQ,
Esser et al. 2020), BatchNorm folded as QAT needs it (Jacob et al. 2018); runs under torchrun /
DistributedDataParallel (see `lowbit.qat.distributed`).
"""

from lowbit.extras import require

require("torch", "lowbit.qat (quantization-aware training)")

from lowbit.qat.export import QATExport, export, to_plan  # noqa: E402
from lowbit.qat.fake_quant import FakeQuant, fake_quantize, round_ste
from lowbit.qat.fit import FitResult, evaluate, fit
from lowbit.qat.graph import QATGraph
from lowbit.qat.prepare import from_plan, prepare

__all__ = ["prepare", "from_plan", "fit", "evaluate", "export", "to_plan", "QATGraph", "QATExport", "FitResult",
           "FakeQuant", "fake_quantize", "round_ste"]
