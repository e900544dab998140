"""Pure quantization maths: dtypes, granularity, scale/zero-point choice, (fake-)quantization, and
the error measures (SQNR, cosine) every stage reports.

Knows no model format, does no I/O, keeps no state, imports nothing else from lowbit.
"""

from lowbit.core.dtypes import QDtype, int4, int8, uint4, uint8, int16, uint16, int32, dtype_by_name
from lowbit.core.fidelity import cosine_per_sample, decibels, sqnr, sqnr_db
from lowbit.core.granularity import Granularity, PerChannel, PerGroup, PerTensor
from lowbit.core.qparams import (
    QParams,
    choose_qparams,
    dequantize,
    fake_quantize,
    quantize,
    reduce_minmax,
)

__all__ = [
    "QDtype", "int4", "int8", "uint4", "uint8", "int16", "uint16", "int32", "dtype_by_name",
    "Granularity", "PerChannel", "PerGroup", "PerTensor",
    "QParams", "choose_qparams", "dequantize", "fake_quantize", "quantize", "reduce_minmax",
    "sqnr", "sqnr_db", "decibels", "cosine_per_sample",
]
