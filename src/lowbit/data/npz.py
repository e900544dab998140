""".npz archives read lazily: headers first, then rows in bounded chunks, straight from the zip.

`np.load(...)[key]` inflates a whole member at once, so a 2 MB archive of deflated zeros that
declares 2 GiB takes 2 GiB before lowbit sees a single shape. Here every member's npy header is
read first and its declared size (shape x itemsize) checked against the size the zip directory
gives for it; then only the rows a pass asks for are decompressed, a chunk at a time.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from lowbit.data.arrays import LABEL_KEYS
from lowbit.data.spec import InputSpec
from lowbit.errors import DataError

CHUNK_BYTES = 16 * 2**20  # rows of all members read together per chunk (at least one row)
_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError)


@dataclass(frozen=True)
class Member:
    """One array in the archive, known from its header alone."""

    key: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int  # bytes of npy header before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def placeholder(self) -> np.ndarray:
        """An array of the declared shape and dtype holding no memory (zero strides), so shape
        checks run before any data is read."""
        return np.lib.stride_tricks.as_strided(np.zeros((), self.dtype), self.shape, (0,) * len(self.shape))


class NpzArchive:
    """An open .npz file: `members` by key (the input name, or a labels key), rows on demand.

    >>> with NpzArchive(Path("data.npz")) as z:  # doctest: +SKIP
    ...     first = z.rows("x", 0, 16)            # only 16 rows decompressed
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except _ERRORS as exc:
            raise self._corrupt(exc) from None
        self._streams: dict[str, IO[bytes]] = {}
        try:
            self.members = {m.key: m for m in map(self._header, self._zip.infolist())}
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for s in self._streams.values():
            s.close()
        self._streams.clear()
        self._zip.close()

    def _corrupt(self, exc: BaseException) -> DataError:
        return DataError(f"{self.path}: cannot read this .npz file ({type(exc).__name__}: {exc}); it is corrupt or truncated.")

    def _header(self, info: zipfile.ZipInfo) -> Member:
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:  # 3.0 only serves structured dtypes with non-latin1 names, never model inputs
                    raise ValueError(f"npy format version {version} is not supported here")
                offset = f.tell()
        except _ERRORS as exc:
            raise self._corrupt(exc) from None
        if dtype.hasobject:
            raise DataError(f"{self.path}: array '{key}' holds Python objects ({dtype}); model inputs take "
                            "numeric arrays (and lowbit never unpickles data).")
        member = Member(key, info, tuple(int(d) for d in shape), dtype, bool(fortran), offset)
        # the zip directory bounds what decompression can give; a header that declares more is lying
        if member.data_offset + member.nbytes > info.file_size:
            raise DataError(
                f"{self.path}: array '{key}' declares shape {member.shape} of {dtype} ({member.nbytes:,} bytes), "
                f"but the archive holds {info.file_size:,} bytes for it: the file is corrupt or was "
                "tampered with. Re-save it with np.savez."
            )
        return member

    def rows(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a member along axis 0, decompressing only up to `stop`."""
        m = self.members[key]
        row_bytes = m.nbytes // m.shape[0] if m.shape and m.shape[0] else 0
        out = np.empty((stop - start, *m.shape[1:]), m.dtype)
        stream = self._streams.get(key)
        try:
            if stream is None:
                stream = self._streams[key] = self._zip.open(m.info)
            stream.seek(m.data_offset + start * row_bytes)  # forward in a pass: nothing re-read
            view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")
            got = stream.readinto(view) if out.size else 0
        except _ERRORS as exc:
            raise self._corrupt(exc) from None
        if got != out.nbytes:
            raise DataError(f"{self.path}: array '{key}' ends after {got:,} of the {out.nbytes:,} bytes of rows "
                            f"{start}..{stop}: the file is truncated.")
        return out

    def whole(self, key: str) -> np.ndarray:
        """All of a member (Fortran order and 0-d arrays included)."""
        m = self.members[key]
        if m.shape and m.shape[0] and not m.fortran_order:
            return self.rows(key, 0, m.shape[0])
        try:
            with self._zip.open(m.info) as f:
                f.seek(m.data_offset)
                data = f.read(m.nbytes)
        except _ERRORS as exc:
            raise self._corrupt(exc) from None
        if len(data) != m.nbytes:
            raise DataError(f"{self.path}: array '{key}' is truncated ({len(data):,} of {m.nbytes:,} bytes).")
        flat = np.frombuffer(data, m.dtype).copy()
        return flat.reshape(m.shape[::-1]).transpose() if m.fortran_order else flat.reshape(m.shape)


def label_key(keys: Sequence[str], specs: Sequence[InputSpec]) -> str | None:
    """The archive's labels member: the first of `LABEL_KEYS` that is no input name."""
    names = {s.name for s in specs}
    return next((k for k in LABEL_KEYS if k in keys and k not in names), None)


def chunk_rows(archive: NpzArchive, specs: Sequence[InputSpec], batch_size: int) -> tuple[int, int] | None:
    """(samples, rows per chunk) where every member holds samples along axis 0 (inputs at their
    model rank, labels one per sample; inputs without a batch axis are read whole with every
    chunk); None where the archive is one sample (or a model input of unknown rank, or one whose
    samples lie on another axis), read whole."""
    by_name = {s.name: s for s in specs}
    members = [m for m in archive.members.values() if m.key not in constant_members(archive, specs)]
    inputs = [m for m in members if m.key in by_name]
    if not inputs or any(by_name[m.key].rank in (None, 0) or len(m.shape) != by_name[m.key].rank for m in inputs):
        return None
    if any(m.fortran_order or by_name[m.key].batch_axis != 0 for m in inputs):
        return None  # samples along another axis: read whole (rows are contiguous on axis 0 only)
    rows = {m.shape[0] for m in members if m.shape}
    if len(rows) != 1 or any(not m.shape for m in inputs):
        return None  # check_structure / the labels check name the mismatch
    n = rows.pop()
    row_bytes = sum(m.nbytes // n for m in members if m.shape) if n else 0
    per_chunk = max(1, CHUNK_BYTES // max(row_bytes, 1))
    if per_chunk >= batch_size:  # whole batches per chunk: a chunk boundary splits no batch
        per_chunk -= per_chunk % batch_size
    return n, max(1, min(per_chunk, n))


def constant_members(archive: NpzArchive, specs: Sequence[InputSpec]) -> set[str]:
    """Members for inputs without a batch axis: the same array goes with every chunk."""
    none = {s.name for s in specs if s.batch_axis is None}
    return {k for k in archive.members if k in none}
