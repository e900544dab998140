"""Real photos, offline: 20 labeled ImageNet photos (foolbox) and deterministic crops of unlabeled
photos (scikit-image, scikit-learn) for calibration and evaluation on disjoint source photos; and
photos of people (face-api's group photos, face_recognition's portraits) for models that look for
people, split the same way.

Everything comes from packages that ``lowbit data fetch demo`` (the people: ``lowbit data fetch
doorbell``) installs; nothing is downloaded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from lowbit.errors import ConfigError, ModelError, did_you_mean
from lowbit.demo.faces_data import FACES_SETUP_HINT, faces_data_dir
from lowbit.demo.zoo._packages import SETUP_HINT, package_dir

_LABELED = re.compile(r"imagenet_(\d+)_(\d+)\.jpg")


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _people(folder: str, filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        path = faces_data_dir() / folder / filename
        if not path.is_file():
            raise ModelError(f"Photo {path} is missing. {FACES_SETUP_HINT}")
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    return load


# Real RGB photos shipped inside scikit-image and scikit-learn (shapes (H, W, 3) uint8). Only the
# left view of the stereo motorcycle pair is used: the right view is nearly the same photo.
_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    # people: face-api's demo group photos (2-6 faces per crop) and face_recognition's portraits
    **{f"group{i}": _people("face-api/demo", f"sample{i}.jpg") for i in range(1, 7)},
    **{name: _people("face_recognition/test_images", f"{name}.jpg")
       for name in ("obama", "obama2", "obama3", "obama_partial_face", "obama_partial_face2", "biden")},
}

# A fixed split of the source photos: calibration and evaluation never see the same photo.
_SPLITS: dict[str, tuple[str, ...]] = {
    "calib": ("chelsea", "rocket", "flower", "immunohistochemistry"),
    "eval": ("astronaut", "coffee", "motorcycle", "china", "hubble_deep_field", "retina"),
    # odd / even group photos; Obama's portraits split, Biden's one with the calibration
    "people-calib": ("group1", "group3", "group5", "obama", "obama3", "biden"),
    "people-eval": ("group2", "group4", "group6", "obama2", "obama_partial_face", "obama_partial_face2"),
}
# mixed into the seed, so splits draw different crops
_SPLIT_CODES = {"calib": 0, "eval": 1, "all": 2, "people-calib": 3, "people-eval": 4}

MIN_CROP, MAX_CROP = 0.3, 1.0  # crop side as a fraction of the photo's shorter side


def labeled_imagenet_photos() -> list[tuple[Path, int]]:
    """The 20 labeled ImageNet photos shipped in foolbox 3.3.4, as (path, ImageNet class index).

    >>> photos = labeled_imagenet_photos()
    >>> len(photos), photos[0][1]
    (20, 243)
    """
    data = package_dir("foolbox", "foolbox==3.3.4") / "data"
    found = sorted((p, int(m.group(2))) for p in data.glob("imagenet_*.jpg") if (m := _LABELED.fullmatch(p.name)))
    if len(found) != 20:
        raise ModelError(f"Expected 20 labeled ImageNet photos in {data}, found {len(found)}. {SETUP_HINT}")
    return found


def photo_sources(split: str) -> list[str]:
    """Names of the source photos behind ``split`` ("calib", "eval", "all" = both, "people-calib",
    "people-eval").

    >>> set(photo_sources("calib")) & set(photo_sources("eval"))
    set()
    """
    if split == "all":
        return [*_SPLITS["calib"], *_SPLITS["eval"]]
    if split not in _SPLITS:
        raise ConfigError(f"Unknown photo split '{split}'." + did_you_mean(split, _SPLIT_CODES))
    return list(_SPLITS[split])


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """Decoded source photo (H, W, 3) uint8, read-only, cached per process."""
    try:
        image = np.ascontiguousarray(_LOADERS[name]())
    except ImportError as e:
        raise ModelError(f"Photo '{name}' needs scikit-image and scikit-learn ({e}). {SETUP_HINT}") from e
    if image.ndim == 2:  # greyscale: repeat to RGB
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3]
    image.setflags(write=False)
    return image


def iter_photo_crops(split: str, n: int, size: int = 256, seed: int = 0) -> Iterator[Image.Image]:
    """Yield ``n`` RGB ``size``x``size`` crops of real photos, lazily; a pure function of the arguments.

    Crops cycle through the split's source photos; each takes a random square of side 30%-100% of
    the photo's shorter side at a random position, flipped left-right half of the time. Crop ``i``
    depends only on (split, seed, i), so a longer list extends a shorter one.

    >>> next(iter_photo_crops("calib", 1)).size
    (256, 256)
    """
    sources = photo_sources(split)
    if n < 0 or size < 1:
        raise ConfigError(f"Need n >= 0 and size >= 1 for photo crops; got n={n}, size={size}.")
    for i in range(n):
        photo = _photo(sources[i % len(sources)])
        h, w = photo.shape[:2]
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
        side = max(1, round(rng.uniform(MIN_CROP, MAX_CROP) * min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield crop.resize((size, size), Image.Resampling.BILINEAR)


def photo_crops(split: str, n: int, size: int = 256, seed: int = 0) -> list[Image.Image]:
    """List form of :func:`iter_photo_crops`: ``n`` deterministic RGB crops of real photos.

    Calibrate on ``"calib"`` and evaluate on ``"eval"``: they share no source photo.

    >>> calib = photo_crops("calib", 64)
    >>> evaluation = photo_crops("eval", 300)
    """
    return list(iter_photo_crops(split, n, size, seed))
