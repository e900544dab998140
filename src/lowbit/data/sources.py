"""`as_feeds`: every accepted form of data (arrays, .npy/.npz files and folders, image folders,
iterables, DataLoaders) turned into one `FeedSource`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lowbit.data.arrays import LABEL_KEYS, check_structure, is_tensor, split_sample, to_array
from lowbit.data.feeds import FeedSource, Item, LabelFn, Loaded
from lowbit.data.images import IMAGE_SUFFIXES, ImagePreprocess, read_image
from lowbit.data.npz import NpzArchive, chunk_rows, constant_members, label_key
from lowbit.data.spec import InputSpec
from lowbit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ARRAY_SUFFIXES = (".npy", ".npz")
_LOAD_ERRORS = (OSError, ValueError, EOFError, KeyError)
_NEED_PREPROCESS = (
    "images need a declared preprocessing: lowbit infers none. Pass preprocess="
    "ImagePreprocess.imagenet() (CLI: --preprocess imagenet) or a key=value list, e.g. "
    "--preprocess resize=256,crop=224,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,layout=NCHW."
)


def as_feeds(
    data: Any,
    specs: Sequence[InputSpec],
    *,
    labels: Any = None,
    preprocess: ImagePreprocess | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    skip_bad: bool = False,
    sequences: bool = False,
) -> FeedSource:
    """Calibration / evaluation data as a re-iterable, streaming `FeedSource` of `Batch`es.

    `data`: a .npy/.npz file or a folder of them, an image folder (needs `preprocess`; class
    subfolders give labels), an array, a dict name->array, a re-iterable of samples or batches
    (arrays, tuples, dicts, (inputs, labels) pairs, torch tensors; a DataLoader), a zero-arg
    function returning a fresh iterable, or a FeedSource. `labels`: an array, a .npy/.txt path
    or a function(source) -> label. `sequences`: stateful data, one sequence per item (see
    `FeedSource`; built by `lowbit.data.stateful.stateful_feeds`).

    >>> spec = InputSpec("x", ("N", 3, 8, 8), np.float32)
    >>> [b.feeds["x"].shape for b in as_feeds(np.zeros((5, 3, 8, 8), np.float32), [spec], batch_size=4)]
    [(4, 3, 8, 8), (1, 3, 8, 8)]
    """
    if isinstance(data, FeedSource):
        return data
    specs = list(specs)
    if not specs:
        raise ConfigError("the model has no inputs to feed (specs is empty).")
    kw: dict[str, Any] = dict(
        labels=_resolve_labels(labels), batch_size=batch_size, limit=limit, skip_bad=skip_bad,
        sequences=sequences,
    )
    if isinstance(data, (str, os.PathLike)):
        return _from_path(Path(data), specs, preprocess, kw)
    if isinstance(data, np.ndarray) or is_tensor(data) or isinstance(data, Mapping):
        _no_preprocess(preprocess, "arrays")
        inputs = dict(data) if isinstance(data, Mapping) else {specs[0].name: data}
        if not isinstance(data, Mapping) and len(specs) > 1:
            split_sample(data, specs, "array")  # raises: a bare array for a multi-input model
        label_key = next((k for k in LABEL_KEYS if k in inputs and k not in {s.name for s in specs}), None)
        data_labels = inputs.pop(label_key) if label_key else None
        what = "dict" if isinstance(data, Mapping) else "array"
        return _collection(lambda: (inputs, data_labels), what, specs, kw)
    if isinstance(data, Image.Image):
        data = [data]
    if isinstance(data, Iterator) or hasattr(data, "__next__"):
        raise DataError(
            f"got a one-shot iterator ({type(data).__name__}): it is consumed after one pass, but "
            "calibration and evaluation read the data more than once. Pass a list, a re-iterable "
            "(e.g. a DataLoader), or a function that returns a fresh iterable (lambda: my_gen())."
        )
    if callable(data) and not hasattr(data, "__iter__") and not hasattr(data, "__getitem__"):
        name = f"{getattr(data, '__name__', type(data).__name__)}()"
        return FeedSource(_elements(data, name, specs, preprocess, batch_size), specs, description=name, **kw)
    if hasattr(data, "__iter__") or hasattr(data, "__getitem__"):
        name = type(data).__name__
        return FeedSource(_elements(lambda: data, name, specs, preprocess, batch_size), specs, description=name, **kw)
    raise DataError(
        f"cannot read data of type {type(data).__name__}: give a .npy/.npz file or folder, an image "
        "folder, an array, a dict of arrays, a list/iterable of samples, or a DataLoader."
    )


def _from_path(path: Path, specs: list[InputSpec], preprocess: ImagePreprocess | None, kw: dict) -> FeedSource:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder.")
    if path.is_dir():
        return _from_folder(path, specs, preprocess, kw)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        _no_preprocess(preprocess, str(path))
        _single_input(specs, path)
        return _collection(lambda: ({specs[0].name: _load_npy(path)}, None), str(path), specs, kw)
    if suffix == ".npz":
        _no_preprocess(preprocess, str(path))
        return FeedSource(lambda: _npz_items(path, specs, kw["batch_size"], collection=True), specs,
                          description=str(path), num_samples=_npz_samples(path, specs, kw["batch_size"]), **kw)
    if suffix in IMAGE_SUFFIXES:
        return _from_images([path], path.parent, str(path), specs, preprocess, kw)
    raise DataError(
        f"{path}: unsupported file type '{path.suffix}'; give a .npy or .npz file, an image "
        f"({', '.join(sorted(IMAGE_SUFFIXES))}) or a folder of them."
    )


def _from_folder(root: Path, specs: list[InputSpec], preprocess: ImagePreprocess | None, kw: dict) -> FeedSource:
    entries = [p for p in root.rglob("*") if not any(s.startswith(".") for s in p.relative_to(root).parts)]
    files = sorted((p for p in entries if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    odd = [p for p in entries if not p.is_file() and not p.is_dir()]
    if odd:  # devices, FIFOs, dangling links: never opened (a FIFO would block, /dev/zero never ends)
        log.warning("%s: skipped %d entr%s that %s not a regular file (first: %s)", root, len(odd),
                    "y" if len(odd) == 1 else "ies", "is" if len(odd) == 1 else "are", odd[0])
    arrays = [p for p in files if p.suffix.lower() in ARRAY_SUFFIXES]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if arrays and images:
        raise DataError(
            f"{root}: the folder mixes {len(arrays)} array file(s) (.npy/.npz) and {len(images)} "
            "image(s); give a folder holding one kind."
        )
    if not arrays and not images:
        raise DataError(
            f"no samples found in {root}: no .npy/.npz or image files "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}) in it or its subfolders."
        )
    if images:
        return _from_images(images, root, str(root), specs, preprocess, kw)
    _no_preprocess(preprocess, str(root))

    def items() -> Iterator[Item]:
        for p in arrays:
            yield from _array_file_items(p, str(p), specs, kw["batch_size"])

    return FeedSource(items, specs, description=str(root), **kw)


def _from_images(
    images: list[Path], root: Path, description: str, specs: list[InputSpec],
    preprocess: ImagePreprocess | None, kw: dict,
) -> FeedSource:
    if preprocess is None:
        raise DataError(f"{description}: {_NEED_PREPROCESS}")
    _single_input(specs, description)
    parts = [p.relative_to(root).parts for p in images]
    classes = sorted({q[0] for q in parts}) if all(len(q) == 2 for q in parts) else []
    if len(classes) < 2:
        classes = []
    else:
        log.info("%s: labels from %d class folders (%s, ...)", description, len(classes), classes[0])
    index = {c: i for i, c in enumerate(classes)}

    def load(p: Path, label: int | None) -> Loaded:
        try:
            x = read_image(p, preprocess)
        except DataError as exc:
            raise exc if str(exc).startswith(str(p)) else DataError(f"{p}: {exc}") from None
        return Loaded({specs[0].name: x}, label, from_images=True)

    def items() -> Iterator[Item]:
        for p, q in zip(images, parts):
            label = index[q[0]] if classes else None
            yield str(p), (lambda p=p, label=label: load(p, label))

    return FeedSource(items, specs, description=description, num_samples=len(images), **kw)


def _collection(
    get: Callable[[], tuple[dict[str, Any], Any]], what: str, specs: list[InputSpec], kw: dict
) -> FeedSource:
    """A whole array / dict / file whose first axis holds samples: one item, cut into batches."""
    # shapes only: also checks names, ranks and dims before the first pass
    inputs = {k: to_array(v, what, f"input '{k}'") for k, v in get()[0].items()}
    if any(a.ndim and a.shape[0] == 0 for a in inputs.values()):
        shapes = ", ".join(f"'{k}': {a.shape}" for k, a in inputs.items())
        raise DataError(f"no samples found in {what}: its arrays have 0 samples ({shapes}).")
    num_samples = check_structure(inputs, specs, what)[1]

    def items() -> Iterator[Item]:
        yield what, lambda: Loaded(*get(), collection=True)

    return FeedSource(items, specs, description=what, num_samples=num_samples, **kw)


def _elements(
    make: Callable[[], Iterable[Any]], name: str, specs: list[InputSpec], preprocess: ImagePreprocess | None,
    batch_size: int,
) -> Callable[[], Iterator[Item]]:
    """Items of a re-iterable (each element a sample or a batch), made fresh for every pass."""

    def items() -> Iterator[Item]:
        iterable = make()
        if not hasattr(iterable, "__iter__") and not hasattr(iterable, "__getitem__"):
            raise DataError(f"{name} returned a {type(iterable).__name__}, not an iterable of samples.")
        for i, element in enumerate(iterable):
            source = f"{name}[{i}]"
            if isinstance(element, (str, os.PathLike)) and Path(element).suffix.lower() in ARRAY_SUFFIXES:
                yield from _array_file_items(Path(element), source, specs, batch_size)
                continue
            yield source, (lambda e=element, s=source: _element(e, specs, s, preprocess))

    return items


def _element(element: Any, specs: list[InputSpec], source: str, preprocess: ImagePreprocess | None) -> Loaded:
    if isinstance(element, (str, os.PathLike)):
        path = Path(element)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if preprocess is None:
                raise DataError(f"{path}: {_NEED_PREPROCESS}")
            return Loaded({specs[0].name: read_image(path, preprocess)}, None, from_images=True)
        raise DataError(
            f"{path}: unsupported file type '{path.suffix}'; give .npy / .npz files or images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})."
        )
    inputs, labels = split_sample(element, specs, source)
    images = {k for k, v in inputs.items() if isinstance(v, Image.Image)}
    if images and preprocess is None:
        raise DataError(f"{source}: {_NEED_PREPROCESS}")
    for k in images:
        inputs[k] = preprocess.apply(inputs[k])  # type: ignore[union-attr]
    return Loaded(inputs, labels, from_images=bool(images))


def _array_file_items(path: Path, source: str, specs: list[InputSpec], batch_size: int) -> Iterator[Item]:
    """The items of one .npy / .npz file among others (a sample, or a batch kept apart from the
    other files), read from disk a batch at a time: .npy memory-mapped, .npz by chunks."""
    if path.suffix.lower() == ".npz":
        yield from _npz_items(path, specs, batch_size, collection=False, source=source)
        return

    def load() -> Loaded:
        _single_input(specs, path)
        return Loaded({specs[0].name: _load_npy(path)}, on_disk=True)

    yield source, load


def _load_npy(path: Path) -> np.ndarray:
    """A .npy file memory-mapped: rows are read when a batch is cut from it, never the whole file."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except _LOAD_ERRORS as exc:
        raise DataError(f"{path}: cannot read this .npy file ({type(exc).__name__}: {exc}); it is corrupt or truncated.") from None


def _npz_layout(z: NpzArchive, specs: list[InputSpec], batch_size: int, source: str) -> tuple[int, int] | None:
    """Checks an archive's names, ranks and dims from its headers (nothing decompressed) and gives
    (samples, rows per chunk), or None for an archive read whole (one sample)."""
    key = label_key(list(z.members), specs)
    check_structure({k: m.placeholder() for k, m in z.members.items() if k != key}, specs, source)
    return chunk_rows(z, specs, batch_size)


def _npz_samples(path: Path, specs: list[InputSpec], batch_size: int) -> int | None:
    """The number of samples, from the headers; checks the archive before the first pass."""
    with NpzArchive(path) as z:
        layout = _npz_layout(z, specs, batch_size, str(path))
    return None if layout is None else layout[0]


def _npz_items(path: Path, specs: list[InputSpec], batch_size: int, *, collection: bool,
               source: str | None = None) -> Iterator[Item]:
    """An archive as items of bounded chunks of rows, each decompressed only when loaded (a pass
    that stops at its `limit` never inflates the rest)."""
    source = source or str(path)
    try:
        z = NpzArchive(path)
    except DataError as exc:
        yield source, _raises(exc)  # raised where the pass can skip it (skip_bad)
        return
    with z:
        try:
            layout = _npz_layout(z, specs, batch_size, source)
        except DataError as exc:
            yield source, _raises(exc)
            return
        key = label_key(list(z.members), specs)

        def loaded(arrays: dict[str, np.ndarray], **kw: Any) -> Loaded:
            labels = arrays.pop(key) if key else None
            return Loaded(arrays, labels, collection=collection, **kw)

        if layout is None:
            yield source, lambda: loaded({k: z.whole(k) for k in z.members})
            return
        n, per_chunk = layout
        whole = constant_members(z, specs)
        for start in range(0, n, per_chunk):
            stop = min(start + per_chunk, n)
            yield source, (lambda start=start, stop=stop: loaded(
                {k: z.rows(k, start, stop) if m.shape and k not in whole else z.whole(k)
                 for k, m in z.members.items()},
                on_disk=True, first_row=start, file_rows=n))


def _raises(exc: DataError) -> Callable[[], Loaded]:
    def load() -> Loaded:
        raise exc

    return load


def _resolve_labels(labels: Any) -> LabelFn:
    if labels is None or (callable(labels) and not is_tensor(labels)):
        return labels
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        try:
            if path.suffix.lower() == ".npy":
                arr = np.load(path, allow_pickle=False)
            else:
                arr = np.loadtxt(path, ndmin=1)
        except _LOAD_ERRORS as exc:
            raise DataError(f"{path}: cannot read labels ({type(exc).__name__}: {exc}); give a .npy file or a text file with one label per line.") from None
        if arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        return arr
    arr = to_array(labels, "labels", "labels")
    return arr[None] if arr.ndim == 0 else arr


def _no_preprocess(preprocess: ImagePreprocess | None, what: str) -> None:
    if preprocess is not None:
        raise ConfigError(f"preprocess applies to images, but {what} holds arrays; leave preprocess unset.")


def _single_input(specs: list[InputSpec], where: object) -> None:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise DataError(
            f"{where}: .npy files and images feed single-input models, but this model has {len(specs)} "
            f"inputs ({names}). Use .npz files (or dicts) keyed by input name."
        )
