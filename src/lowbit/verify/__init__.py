"""Verify stage: fidelity to FP32, latency, size and parity with lowbit's own simulation."""

from lowbit.verify.fidelity import FidelityAccumulator, compare_models
from lowbit.verify.fusion import kernel_check
from lowbit.verify.latency import measure_latency, speedup_interval
from lowbit.verify.parity import check_parity

__all__ = ["FidelityAccumulator", "compare_models", "measure_latency", "speedup_interval", "check_parity", "kernel_check"]
