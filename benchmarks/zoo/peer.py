"""ONNX Runtime's own quantizers as peers, run in a child process by the zoo runner:
`python -m benchmarks.zoo.peer {static,dynamic} MODEL CALIB_RUNS.npz OUT.onnx`.

static: QDQ, MinMax, per-channel weights, uint8 activations / int8 weights (ORT's defaults),
calibrated on the same calibration data as lowbit; dynamic: `quantize_dynamic` defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_dynamic,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from benchmarks.zoo.data import load_runs


class Runs(CalibrationDataReader):
    def __init__(self, path: Path) -> None:
        self.runs = iter(load_runs(path))

    def get_next(self):
        return next(self.runs, None)


def main(kind: str, model: str, calib: str, out: str) -> None:
    if kind == "dynamic":
        quantize_dynamic(model, out)
        return
    pre = Path(out).with_suffix(".pre.onnx")
    try:  # ORT's recommended pre-processing (shape inference, basic optimisation); not every model takes it
        quant_pre_process(model, str(pre))
        src = str(pre)
    except Exception as e:  # noqa: BLE001 - the peer then quantizes the model as given
        print(f"pre-process skipped: {type(e).__name__}: {e}", file=sys.stderr)
        src = model
    quantize_static(src, out, Runs(Path(calib)), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    pre.unlink(missing_ok=True)


if __name__ == "__main__":
    import os
    import tempfile

    # ORT's quantizers leave scratch files (sym_shape_infer_temp.onnx, *.data) in the working folder
    args = [str(Path(a).resolve()) for a in sys.argv[2:5]]
    with tempfile.TemporaryDirectory(prefix="zoo-peer-") as scratch:
        os.chdir(scratch)
        main(sys.argv[1], *args)
