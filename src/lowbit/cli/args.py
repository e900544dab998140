"""Argument types shared by the `lowbit` commands: a bad value is argparse's one-line error, exit 2."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def positive_int(text: str) -> int:
    """A count such as --latency-runs: a whole number of at least 1 (0 would leave nothing to measure)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number such as 30; got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def output_file(text: str) -> Path:
    """An output file's path. A trailing slash says the user meant a folder: Path() would drop it and
    lowbit would write a file of that name instead."""
    if not text or text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"'{text}' names a folder, not a file; give a file name such as "
                                         f"{Path(text or '.') / 'model.onnx'}")
    return Path(text)
