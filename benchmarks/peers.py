"""Peer quantizers that lowbit is compared with, each called the way its documentation shows.

- ONNX Runtime ``quantize_static``: QDQ format, per-channel weights, uint8 activations / int8
  weights (the fast combination on AVX2 CPUs), with MinMax, Percentile and Entropy calibration.
  ``quant_pre_process`` (shape inference and optimisation) runs first, as ORT's docs recommend.
- ONNX Runtime ``quantize_dynamic`` at its defaults.
- NNCF ``nncf.quantize`` on the ONNX model at its defaults, with ``model_type=TRANSFORMER`` for
  transformers as NNCF's docs ask (only where ``nncf`` imports).

Every function takes the FP32 ONNX path, an output path, the calibration data as a list of
batch-1 feed dicts of equal shapes (an (N, C, H, W) array becomes one feed per row) and the
model's peer options (``nncf_model_type``: NNCF's ``model_type``, e.g. TRANSFORMER), writes the
quantized model and returns notes for the results file. These run inside the benchmark's worker
subprocess, one call per process.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

Feeds = list[dict[str, np.ndarray]]
PeerFn = Callable[[Path, Path, Feeds, str, dict], dict]


def input_name(model_path: Path) -> str:
    """The first graph input that is not an initializer."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def _preprocess(model_path: Path, tmp: Path) -> tuple[Path, str]:
    """ORT's recommended pre-processing; falls back to the raw model if it fails (noted)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp / "preprocessed.onnx"
    try:
        quant_pre_process(str(model_path), str(out))
        return out, "quant_pre_process applied"
    except Exception as e:  # a peer's failure is a result, not a crash of the benchmark
        return model_path, f"quant_pre_process failed ({type(e).__name__}: {str(e)[:120]}); used the raw model"


def as_feed_list(model_path: Path, calib: np.ndarray | Feeds) -> Feeds:
    """Batch-1 feed dicts: an array's rows under the model's input name, or the feeds as given."""
    if isinstance(calib, np.ndarray):
        name = input_name(model_path)
        return [{name: np.ascontiguousarray(calib[i:i + 1])} for i in range(len(calib))]
    return [{k: np.ascontiguousarray(v) for k, v in f.items()} for f in calib]


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: Feeds) -> None:
        self.feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter(self.feeds)
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def ort_static(model_path: Path, out: Path, feeds: Feeds, method: str, options: dict) -> dict:
    """ORT quantize_static, QDQ, per-channel, QUInt8 activations / QInt8 weights, `method` calibration."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        src, note = _preprocess(model_path, Path(tmp))
        quantize_static(str(src), str(out), Reader(feeds),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method))
    return {"notes": [note, f"calibrate_method={method}, {len(feeds)} calibration feeds, "
                            "other options at ORT defaults"]}


def ort_dynamic(model_path: Path, out: Path, feeds: Feeds, option: str, options: dict) -> dict:
    """ORT quantize_dynamic at its defaults (no calibration data)."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(model_path), str(out))
    return {"notes": ["quantize_dynamic defaults"]}


def nncf_quantize(model_path: Path, out: Path, feeds: Feeds, option: str, options: dict) -> dict:
    """NNCF post-training quantization of the ONNX model, defaults (but `model_type` where the model
    has one, as NNCF's docs ask for transformers), all calibration samples used."""
    import nncf
    import onnx

    model = onnx.load(str(model_path))
    kw = {}
    if options.get("nncf_model_type"):
        kw["model_type"] = getattr(nncf.ModelType, options["nncf_model_type"])
    quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), **kw)
    onnx.save(quantized, str(out))
    how = f"model_type={options['nncf_model_type']}, otherwise defaults" if kw else "defaults"
    return {"notes": [f"nncf {nncf.__version__}, {how} (preset PERFORMANCE), subset_size={len(feeds)}"]}


# label -> (function, option). The order is the order of the table.
PEERS: dict[str, tuple[PeerFn, str]] = {
    "ort-static-minmax": (ort_static, "MinMax"),
    "ort-static-percentile": (ort_static, "Percentile"),
    "ort-static-entropy": (ort_static, "Entropy"),
    "ort-dynamic": (ort_dynamic, ""),
    "nncf": (nncf_quantize, ""),
}


def unavailable(label: str) -> str | None:
    """Why peer `label` cannot run here, or None when it can."""
    if label == "nncf" and importlib.util.find_spec("nncf") is None:
        return "nncf is not installed (pip install -r benchmarks/requirements-peers.txt)"
    return None


def run_peer(label: str, model_path: Path, out: Path, calib: np.ndarray | Feeds, options: dict | None = None) -> dict:
    fn, option = PEERS[label]
    return fn(model_path, out, as_feed_list(model_path, calib), option, options or {})
