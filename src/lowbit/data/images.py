"""Image preprocessing, declared: resize, centre crop, scale, mean/std, channel order, layout."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from lowbit.errors import ConfigError, DataError, did_you_mean

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
CHANNEL_ORDERS = ("RGB", "BGR", "GRAY")
LAYOUTS = ("NCHW", "NHWC")
# pixels decoded for one image at most (~150 MB as RGB; a 12 MP phone photo is a quarter of it),
# unless the declared output needs more: a 13000 x 13000 PNG, below PIL's own bomb limit, took 1.3 GB
MAX_DECODE_PIXELS = 50_000_000


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image becomes one model sample: resize the shorter side to `resize` (bilinear),
    centre-crop to `crop` (int: square, or (height, width)), multiply by `scale`, subtract
    `mean`, divide by `std` (both in output channel order; one value applies to every channel),
    order channels, lay out as CHW ('NCHW') or HWC ('NHWC') and cast to `dtype`.
    Image files are decoded at most at `max_pixels` (or 4x the declared output, where that is
    more); JPEGs are decoded directly at a reduced scale where the resize allows.

    >>> ImagePreprocess.imagenet().apply(Image.new("RGB", (300, 280))).shape
    (3, 224, 224)
    """

    resize: int | None = 256
    crop: Union[int, tuple[int, int], None] = 224
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: Any = np.float32
    max_pixels: int = MAX_DECODE_PIXELS

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        if self.resize is not None and (not _is_int(self.resize) or self.resize <= 0):
            raise ConfigError(f"resize must be a positive int (shorter side in pixels) or None; got {self.resize!r}.")
        if self.crop is not None:
            crop = (self.crop, self.crop) if _is_int(self.crop) else tuple(self.crop)  # type: ignore[arg-type]
            if len(crop) != 2 or not all(_is_int(c) and c > 0 for c in crop):
                raise ConfigError(f"crop must be a positive int or (height, width) of positive ints; got {self.crop!r}.")
            if self.resize is not None and _is_int(self.crop) and crop[0] > self.resize:
                raise ConfigError(
                    f"crop {crop[0]} is larger than resize {self.resize} (the shorter side); "
                    f"use crop <= resize, e.g. resize={crop[0]}."
                )
            set_("crop", int(self.crop) if _is_int(self.crop) else (int(crop[0]), int(crop[1])))
        if not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale) or self.scale <= 0:
            raise ConfigError(f"scale must be a positive finite number (1/255 for [0, 1] pixels); got {self.scale!r}.")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"unknown channel_order '{self.channel_order}'.{did_you_mean(str(self.channel_order), CHANNEL_ORDERS)}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout '{self.layout}'.{did_you_mean(str(self.layout), LAYOUTS)}")
        channels = 1 if self.channel_order == "GRAY" else 3
        for name in ("mean", "std"):
            values = getattr(self, name)
            values = (values,) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
            if len(values) not in (1, channels) or not all(math.isfinite(v) for v in values):
                raise ConfigError(
                    f"{name} must hold 1 or {channels} finite value(s) for channel_order="
                    f"'{self.channel_order}'; got {getattr(self, name)!r}."
                )
            set_(name, values)
        if any(v <= 0 for v in self.std):
            raise ConfigError(f"std values must be > 0; got {self.std!r}.")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise ConfigError(f"dtype must be a numpy float dtype or uint8; got {self.dtype!r}.") from None
        if dtype.kind != "f" and dtype != np.uint8:
            raise ConfigError(f"dtype must be a numpy float dtype or uint8; got {dtype}.")
        set_("dtype", dtype)
        if not _is_int(self.max_pixels) or self.max_pixels <= 0:
            raise ConfigError(f"max_pixels must be a positive int (pixels decoded per image); got {self.max_pixels!r}.")

    @classmethod
    def imagenet(cls) -> ImagePreprocess:
        """The torchvision ImageNet recipe: resize 256, crop 224, [0, 1], ImageNet mean/std, NCHW.

        >>> ImagePreprocess.imagenet().crop
        224
        """
        return cls()

    @classmethod
    def parse(cls, text: str) -> ImagePreprocess:
        """Parse the CLI form: 'imagenet', or comma-separated key=value, optionally after
        'imagenet'. Lists use '/'; 'none' clears resize/crop; crop may be 'HxW'; scale may be '1/255'.

        >>> ImagePreprocess.parse("resize=256,crop=224,mean=0.5/0.5/0.5,std=0.5,layout=NHWC").layout
        'NHWC'
        """
        keys = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        for i, part in enumerate(p.strip() for p in text.split(",")):
            if not part or (i == 0 and part.lower() == "imagenet"):
                continue
            if "=" not in part:
                raise ConfigError(
                    f"cannot read preprocessing '{part}' in '{text}': use 'imagenet' or key=value "
                    f"pairs separated by commas (keys: {', '.join(keys)})."
                )
            key, value = (s.strip() for s in part.split("=", 1))
            if key not in keys:
                raise ConfigError(f"unknown preprocessing key '{key}' in '{text}'.{did_you_mean(key, keys)}")
            try:
                values[key] = _parse_value(key, value)
            except (ValueError, TypeError):
                raise ConfigError(f"cannot read {key}='{value}' in preprocessing '{text}'.") from None
        return cls(**values)

    @property
    def channels(self) -> int:
        """Number of output channels: 1 for GRAY, else 3."""
        return 1 if self.channel_order == "GRAY" else 3

    def apply(self, image: Image.Image) -> np.ndarray:
        """One sample without batch axis: (C, H, W) for NCHW, (H, W, C) for NHWC.

        >>> ImagePreprocess(resize=None, crop=None).apply(Image.new("RGB", (8, 6))).shape
        (3, 6, 8)
        """
        mode = "L" if self.channel_order == "GRAY" else "RGB"
        if image.mode != mode:  # convert() copies even to the same mode: no second copy of a big image
            image = image.convert(mode)
        if self.resize is not None:
            w, h = image.size
            short = min(w, h)
            size = (max(1, round(w * self.resize / short)), max(1, round(h * self.resize / short)))
            if size != image.size:
                image = image.resize(size, Image.Resampling.BILINEAR)
        if self.crop is not None:
            ch, cw = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
            w, h = image.size
            if cw > w or ch > h:
                raise DataError(
                    f"image of {w}x{h} (after resize) is smaller than the crop {cw}x{ch}; "
                    "set resize to at least the crop size."
                )
            left, top = (w - cw) // 2, (h - ch) // 2
            image = image.crop((left, top, left + cw, top + ch))
        x = np.asarray(image, dtype=np.float32)
        x = x[:, :, None] if x.ndim == 2 else x  # (H, W, C)
        if self.channel_order == "BGR":
            x = x[:, :, ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        x = (x * np.float32(self.scale) - mean) / std
        if self.dtype == np.uint8:
            x = np.clip(np.rint(x), 0, 255)
        x = x.astype(self.dtype)
        return np.ascontiguousarray(x.transpose(2, 0, 1) if self.layout == "NCHW" else x)

    def apply_array(self, hwc_uint8: np.ndarray) -> np.ndarray:
        """`apply` for an (H, W, 3) or (H, W) uint8 array.

        >>> ImagePreprocess(resize=None, crop=2).apply_array(np.zeros((4, 4, 3), np.uint8)).shape
        (3, 2, 2)
        """
        x = np.asarray(hwc_uint8)
        if x.dtype != np.uint8 or x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 3, 4)):
            raise DataError(
                f"apply_array takes an (H, W, 3) or (H, W) uint8 image; got {x.dtype} of shape {x.shape}."
            )
        return self.apply(Image.fromarray(x[:, :, 0] if x.ndim == 3 and x.shape[2] == 1 else x))


    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest decoded size the declared resize still reads every output pixel from
        (the image's own size where there is no resize).

        >>> ImagePreprocess.imagenet().decode_size(4000, 3000)
        (342, 256)
        """
        if self.resize is None:
            return width, height
        short = min(width, height)
        return max(1, math.ceil(width * self.resize / short)), max(1, math.ceil(height * self.resize / short))

    def pixel_limit(self) -> int:
        """Pixels decoded per image at most: `max_pixels`, or 4x the output where that is more.

        >>> ImagePreprocess(resize=None, crop=(8000, 8000)).pixel_limit()
        256000000
        """
        ch, cw = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop or (0, 0)
        side = self.resize or 0
        return max(self.max_pixels, 4 * ch * cw, 4 * side * side)


def read_image(path: Path, preprocess: ImagePreprocess) -> np.ndarray:
    """One image file as a model sample, decoded no larger than the preprocessing needs: a JPEG at
    the smallest DCT scale the resize allows (`Image.draft`); any image whose decoded size would
    exceed `preprocess.pixel_limit()` is refused from its header, before decoding.

    A corrupt, truncated or oversized file is a DataError naming it.
    """
    try:
        with warnings.catch_warnings():  # lowbit's own limit applies below; PIL's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                w, h = image.size
                image.draft("L" if preprocess.channel_order == "GRAY" else "RGB", preprocess.decode_size(w, h))
                dw, dh = image.size  # a JPEG's draft scale shows in its size; other formats keep theirs
                limit = preprocess.pixel_limit()
                if dw * dh > limit:
                    raise DataError(
                        f"{path}: image of {w}x{h} ({w * h / 1e6:.1f} MP) would be decoded at {dw}x{dh}, beyond "
                        f"the {limit / 1e6:g} MP lowbit decodes per image for this preprocessing (resize="
                        f"{preprocess.resize}, crop={preprocess.crop}). Downscale it first, or raise the limit "
                        f"with max_pixels= in the preprocessing (CLI: --preprocess ...,max_pixels={dw * dh})."
                    )
                image.load()
                return preprocess.apply(image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"{path}: cannot read this image ({type(exc).__name__}: {exc}); the file is corrupt, "
        "truncated or not an image. Remove it, or pass skip_bad=True to skip such files."
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _parse_value(key: str, value: str) -> Any:
    if key in ("resize", "crop") and value.lower() == "none":
        return None
    if key == "resize":
        return int(value)
    if key == "crop":
        if "x" in value.lower():
            h, w = value.lower().split("x")
            return (int(h), int(w))
        return int(value)
    if key == "scale":
        if "/" in value:
            num, den = value.split("/")
            return float(num) / float(den)
        return float(value)
    if key in ("mean", "std"):
        return tuple(float(v) for v in value.split("/"))
    if key in ("channel_order", "layout"):
        return value.upper()
    if key == "max_pixels":
        return int(float(value))
    return np.dtype(value)
