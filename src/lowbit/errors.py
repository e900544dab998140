"""lowbit's exceptions: one family, each naming what was wrong and what would be right."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LowbitError(Exception):
    """Base of every error lowbit raises on purpose. The CLI prints its message, no traceback."""


class ConfigError(LowbitError, ValueError):
    """An option, preset, name or value that lowbit cannot use."""


class ModelError(LowbitError):
    """A model file or graph that cannot be loaded, checked or quantized."""


class DataError(LowbitError, ValueError):
    """Calibration or evaluation data that does not fit the model."""


class OutputError(LowbitError, OSError):
    """An output path that cannot be written."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' when a close choice exists, else the list of choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f" Did you mean '{close[0]}'? Choices: {', '.join(choices)}."
    return f" Choices: {', '.join(choices)}."
