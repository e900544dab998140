"""Optional dependencies: ONNX quantization needs only onnx, onnxruntime and numpy; torch (torch
inputs, QAT, recover, AdaRound, the demos' weights) comes with `lowbit[torch]`, matplotlib (the
HTML report's charts) with `lowbit[report]`. Their imports go through `require`, so a missing one
is a one-paragraph error naming the extra, not a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from lowbit.errors import LowbitError

# import name -> (pip extra that installs it, distribution name)
EXTRAS = {"torch": ("torch", "torch"), "matplotlib": ("report", "matplotlib")}


class MissingExtra(LowbitError, ImportError):
    """An optional dependency a feature needs is not installed (the message names the extra)."""


def available(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def require(module: str, feature: str) -> ModuleType:
    """`import module` for `feature`, or MissingExtra saying which extra installs it.

    >>> require("numpy", "arrays").__name__
    'numpy'
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name not in (top, module):  # the package is there but broken: not a missing extra
            raise
        extra, dist = EXTRAS.get(top, (None, top))
        how = f"pip install 'lowbit[{extra}]'" if extra else f"pip install {dist}"
        if top == "torch":  # an unpinned torch from PyPI is the multi-GB CUDA build
            how = ("pip install torch --index-url https://download.pytorch.org/whl/cpu, then "
                   f"{how} (the CPU build first: plain PyPI torch is the multi-GB CUDA one)")
        raise MissingExtra(f"{feature}: this needs {dist}, which is not installed here; {how}. Quantizing ONNX "
                           "models needs neither torch nor matplotlib.") from None
