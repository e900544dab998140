"""Calibration methods applied to weights: one observer per tensor or per output channel."""

from __future__ import annotations

import numpy as np

from lowbit.calibration.base import CalibrationMethod
from lowbit.calibration.minmax import MinMax
from lowbit.core.dtypes import QDtype
from lowbit.core.granularity import Granularity, PerChannel, PerTensor
from lowbit.core.qparams import reduce_minmax
from lowbit.errors import ConfigError


def weight_range(method: CalibrationMethod, w: np.ndarray, granularity: Granularity, dtype: QDtype,
                 symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of weight `w` at `granularity` as `method` chooses them for `dtype`'s grid: shapes
    () per tensor and (C,) per channel, as `reduce_minmax` gives them.

    >>> from lowbit.calibration import MSE
    >>> from lowbit.core.dtypes import int4
    >>> lo, hi = weight_range(MSE(), np.random.randn(8, 64), PerChannel(0), int4, True)
    """
    if isinstance(method, MinMax):
        return reduce_minmax(w, granularity)
    w = np.asarray(w, dtype=np.float32)
    if isinstance(granularity, PerTensor):
        slices = [w]
    elif isinstance(granularity, PerChannel):
        axis = granularity.axis % w.ndim
        slices = list(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1))
    else:
        raise ConfigError(f"calibration '{method.registry_name}' works on weights per tensor or per channel; "
                          f"per-group weights use 'minmax' (got {granularity!r})")
    ranges = []
    for s in slices:
        obs = method.observer()
        obs.update(s)
        ranges.append(obs.range(dtype, symmetric))  # type: ignore[call-arg]
    lo, hi = np.array(ranges, dtype=np.float32).T
    return (lo.reshape(()), hi.reshape(())) if isinstance(granularity, PerTensor) else (lo, hi)
