"""The demo: real ImageNet MobileNetV2, quantized to FP16 and INT8, calibrated on one set of real
photo crops and evaluated on crops of other photos plus 20 labeled ImageNet photos."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowbit.api import VerifyOptions, compare_variants, quantize
from lowbit.data import ImagePreprocess
from lowbit.extras import require
from lowbit.io import atomic_write_bytes, write_all
from lowbit.load.model import export_torch
from lowbit.progress import Progress, null_progress
from lowbit.report import Report

if TYPE_CHECKING:  # only the annotation needs it
    import onnx


def photo_arrays(split: str, n: int) -> list[np.ndarray]:
    """n preprocessed (3, 224, 224) float32 crops of the split's real photos."""
    from lowbit.demo.zoo import iter_photo_crops

    pre = ImagePreprocess.imagenet()
    return [pre.apply(img) for img in iter_photo_crops(split, n)]


def labeled_arrays() -> tuple[list[np.ndarray], np.ndarray]:
    from PIL import Image

    from lowbit.demo.zoo import labeled_imagenet_photos

    pre = ImagePreprocess.imagenet()
    photos = labeled_imagenet_photos()
    xs = [pre.apply(Image.open(p).convert("RGB")) for p, _ in photos]
    return xs, np.asarray([label for _, label in photos])


def export_mobilenet(path: Path | None = None) -> "onnx.ModelProto":
    """MobileNetV2 with its ImageNet weights as ONNX; also written to `path` when given."""
    torch = require("torch", "the demo (MobileNetV2's weights come as a torch module)")

    from lowbit.demo.zoo import mobilenet_v2

    proto = export_torch(mobilenet_v2(pretrained=True), torch.zeros(1, 3, 224, 224))
    if path is not None:
        atomic_write_bytes(path, proto.SerializeToString())
    return proto


def run_demo(out: Path, calib_n: int = 128, eval_n: int = 300, threads: tuple[int, ...] = (1, 2),
             latency_runs: int = 30, progress: Progress = null_progress) -> Report:
    """Quantize MobileNetV2 to FP16 and INT8; one report comparing both with FP32."""
    out = Path(out)
    fp32 = export_mobilenet()  # first: without torch it stops here, before any folder is made
    out.mkdir(parents=True, exist_ok=True)
    calib = photo_arrays("calib", calib_n)
    evaluation = photo_arrays("eval", eval_n)
    results = {}
    for precision in ("fp16", "int8"):
        results[precision] = quantize(fp32, precision, calib if precision == "int8" else None, verify=None,
                                      progress=progress)
    labeled_x, labels = labeled_arrays()
    report = compare_variants(
        fp32, results, evaluation, labeled=(labeled_x, labels),
        verify=VerifyOptions(threads=threads, latency_runs=latency_runs), progress=progress,
        title="lowbit demo: MobileNetV2 (ImageNet weights) on real photos",
    )
    report.data["notes"].append(
        f"Calibrated on {len(calib)} crops of {', '.join(_sources('calib'))}; fidelity measured on {len(evaluation)} "
        f"crops of other photos ({', '.join(_sources('eval'))}); top-1 accuracy on {len(labels)} labeled ImageNet photos.")
    # everything is written at the end, together: a demo that fails leaves an earlier run's files as they were
    write_all([(out / "mobilenet_v2.fp32.onnx", fp32.SerializeToString()),
               *[(out / f"mobilenet_v2.{k}.onnx", r.model.SerializeToString()) for k, r in results.items()],
               (out / "report.json", report.to_json().encode()), (out / "report.html", report.to_html().encode())])
    return report


def _sources(split: str) -> list[str]:
    from lowbit.demo.zoo import photo_sources

    return photo_sources(split)
