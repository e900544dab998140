"""Calibration and evaluation data: any accepted form in, checked model feeds out.

>>> import numpy as np
>>> from lowbit.data import InputSpec, as_feeds
>>> spec = InputSpec("x", ("N", 4), np.float32)
>>> [b.feeds["x"].shape for b in as_feeds(np.ones((3, 4)), [spec], batch_size=2)]
[(2, 4), (1, 4)]
"""

from lowbit.data.feeds import FeedSource
from lowbit.data.images import ImagePreprocess
from lowbit.data.sources import as_feeds
from lowbit.data.spec import Batch, InputSpec, specs_from_onnx

__all__ = ["Batch", "FeedSource", "ImagePreprocess", "InputSpec", "as_feeds", "specs_from_onnx"]
