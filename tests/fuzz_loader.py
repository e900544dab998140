"""Coverage-guided fuzz target for lowbit's model loader (atheris / libFuzzer).

Run: python tests/fuzz_loader.py CORPUS_DIR -max_total_time=60
Anything but a clean result or a lowbit error is a crash.
"""

import sys
import tempfile
from pathlib import Path

import atheris

# the libraries are imported (uninstrumented) first: coverage feedback is wanted for lowbit's code
import numpy  # noqa: E402,F401
import onnx  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401

with atheris.instrument_imports(include=["lowbit"]):
    from lowbit.errors import LowbitError
    from lowbit.load.model import load_model

TMP = Path(tempfile.mkdtemp(prefix="lowbit-fuzz-"))


def test_one(data: bytes) -> None:
    path = TMP / "m.onnx"
    path.write_bytes(data)
    try:
        load_model(path)
    except LowbitError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
