"""Calibration methods: how an activation's observed values become the range it is quantized over.

Each method is a frozen config registered under a stable name; it makes an `Observer` that streams
through batches and is mergeable, so calibration shards can run apart and be combined.
"""

from lowbit.calibration.base import CALIBRATIONS, CalibrationMethod, Observer, register_calibration
from lowbit.calibration.minmax import MinMax

__all__ = ["CALIBRATIONS", "CalibrationMethod", "Observer", "register_calibration", "MinMax"]
