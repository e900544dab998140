"""Calibration methods: how an activation's observed values become the range it is quantized over.

Each method is a frozen config registered under a stable name; it makes an `Observer` that streams
through batches and is mergeable, so calibration shards can run apart and be combined.

>>> from lowbit.calibration import Percentile
>>> obs = Percentile(99.9).observer()
"""

from lowbit.calibration.base import CALIBRATIONS, CalibrationMethod, Observer, register_calibration
from lowbit.calibration.entropy import Entropy
from lowbit.calibration.histogram import HistogramObserver
from lowbit.calibration.minmax import MinMax
from lowbit.calibration.moving_average import MovingAverageMinMax, MovingAverageObserver
from lowbit.calibration.mse import MSE
from lowbit.calibration.percentile import Percentile
from lowbit.calibration.weights import weight_range

__all__ = [
    "CALIBRATIONS", "CalibrationMethod", "Observer", "register_calibration",
    "MinMax", "MovingAverageMinMax", "Percentile", "Entropy", "MSE",
    "HistogramObserver", "MovingAverageObserver", "weight_range",
]
