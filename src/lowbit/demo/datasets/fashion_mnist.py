"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) from the Debian package `dataset-fashion-mnist`.

60,000 training and 10,000 test images, 28x28 grey, 10 classes, stored as gzip'd idx files
(LeCun's MNIST format). `lowbit data fetch fashion-mnist` installs them; `load` reads and checks
them (magic numbers, dimensions, sizes) and says what is wrong when they are missing or damaged.

>>> images, labels = load("test")        # doctest: +SKIP
>>> images.shape, images.dtype, labels[:3]
((10000, 28, 28), dtype('uint8'), array([9, 2, 1], dtype=uint8))
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from lowbit.errors import DataError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "LOWBIT_FASHION_MNIST"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000)}
# idx magic: two zero bytes, the element type (0x08 = uint8), the number of dimensions
_MAGIC_IMAGES = b"\x00\x00\x08\x03"
_MAGIC_LABELS = b"\x00\x00\x08\x01"
# mean / std of the training images scaled to [0, 1], for normalising network inputs
MEAN, STD = 0.2860, 0.3530


def data_dir() -> Path:
    """Where the idx files are: $LOWBIT_FASHION_MNIST, else the Debian package's folder."""
    return Path(os.environ.get(ENV_DIR, DEFAULT_DIR))


def available(root: str | Path | None = None) -> bool:
    """True when all four idx files are present."""
    d = Path(root) if root is not None else data_dir()
    return all((d / f).is_file() for imgs, labs, _ in FILES.values() for f in (imgs, labs))


def read_idx(path: str | Path, magic: bytes) -> np.ndarray:
    """The uint8 array of one idx(.gz) file, after checking its magic number and size."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Fashion-MNIST file not found: {path}. Install it with "
                        "`lowbit data fetch fashion-mnist` (Debian package dataset-fashion-mnist) or set "
                        f"${ENV_DIR} to the folder that holds the idx files.")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path} cannot be read as {'gzip' if opener is gzip.open else 'idx'} "
                        f"({type(e).__name__}: {e}); reinstall the dataset.") from None
    if raw[:4] != magic:
        raise DataError(f"{path} is not an idx file of the expected kind: magic {raw[:4].hex()}, "
                        f"expected {magic.hex()}.")
    ndim = magic[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - start != expected:
        raise DataError(f"{path} is truncated or padded: header says {dims} = {expected} bytes of data, "
                        f"the file holds {len(raw) - start}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def load(split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of split 'train' (60,000) or 'test' (10,000)."""
    if split not in FILES:
        raise DataError(f"unknown Fashion-MNIST split '{split}'; use 'train' or 'test'.")
    d = Path(root) if root is not None else data_dir()
    img_file, lab_file, n = FILES[split]
    images = read_idx(d / img_file, _MAGIC_IMAGES)
    labels = read_idx(d / lab_file, _MAGIC_LABELS)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{d / img_file}: images are {images.shape[1:]}, expected (28, 28).")
    if len(images) != len(labels):
        raise DataError(f"{d}: {len(images)} images but {len(labels)} labels in split '{split}'.")
    if len(images) != n:
        raise DataError(f"{d}: split '{split}' has {len(images)} images, Fashion-MNIST has {n}.")
    if labels.max() >= len(CLASSES):
        raise DataError(f"{d / lab_file}: label {int(labels.max())} is out of range 0..9.")
    return images, labels


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> normalised float32 (N, 1, 28, 28), the networks' input."""
    x = images.astype(np.float32)[:, None] / np.float32(255.0)
    return (x - np.float32(MEAN)) / np.float32(STD)
