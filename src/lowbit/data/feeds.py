"""`FeedSource`: a re-iterable, streaming stream of checked `Batch`es.

Built by `as_feeds` from a function that lists the data's items (a file, an element, a whole
array) each with a loader; a pass loads one item at a time, checks it, attaches labels, skips or
raises on bad samples and regroups samples into batches, holding at most one batch in memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from lowbit.data.arrays import cast, check_structure, nonfinite_rows, take_rows, to_array
from lowbit.data.spec import Batch, InputSpec
from lowbit.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """One loaded item: inputs by name, its labels, and whether its rows are a collection of
    independent samples (a whole array: cut to `batch_size`) or one sample / a user-made batch.
    `on_disk`: the rows are read from disk as they are sliced (a memory-mapped file, a chunk of an
    archive): cut to `batch_size` even where kept apart from other items, so no more than a batch
    is ever in memory. `first_row` / `file_rows`: where the item's rows sit in their file, so
    messages number samples as the file does."""

    inputs: dict[str, Any]
    labels: Any = None
    collection: bool = False
    from_images: bool = False
    on_disk: bool = False
    first_row: int = 0
    file_rows: int | None = None


Item = tuple[str, Callable[[], Loaded]]
LabelFn = Union[np.ndarray, Callable[[str], Any], None]


class FeedSource:
    """Re-iterable batches for a model: every `iter()` starts again from the first sample and
    streams (memory does not grow with the number of samples). Build one with `as_feeds`.

    `.skipped` lists (source, reason) for the samples skipped in the latest pass (skip_bad=True).
    `len()` is the number of batches where it is cheaply known, else a TypeError.

    Each input's samples lie along its spec's `batch_axis`; inputs without one go unchanged with
    every batch. `sequences=True` (stateful data, `lowbit.data.stateful`): every item is one sequence, cut
    into batches of `batch_size` consecutive samples (steps) and never grouped with another
    item; each batch says whether it starts its sequence (`Batch.sequence_start`).

    >>> src = as_feeds(np.zeros((10, 4), np.float32), [InputSpec("x", ("N", 4), np.float32)],
    ...                batch_size=4)  # doctest: +SKIP
    >>> [b.size for b in src]        # doctest: +SKIP
    [4, 4, 2]
    """

    def __init__(
        self,
        items: Callable[[], Iterator[Item]],
        specs: Sequence[InputSpec],
        *,
        description: str,
        labels: LabelFn = None,
        batch_size: int = 1,
        limit: int | None = None,
        skip_bad: bool = False,
        num_samples: int | None = None,
        sequences: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int; got {batch_size!r}.")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"limit must be a positive int or None; got {limit!r}.")
        self.specs = list(specs)
        self.description = description
        self.skipped: list[tuple[str, str]] = []
        self._items, self._labels, self._limit, self._skip_bad = items, labels, limit, skip_bad
        self._num_samples = num_samples
        self.sequences = sequences
        self.axes = {s.name: s.batch_axis for s in self.specs}
        self._target, self._fixed = _target_batch(self.specs, batch_size)
        if sequences:
            self._target, self._fixed = batch_size, False

    def __repr__(self) -> str:
        return f"FeedSource({self.description}, batch={self._target}, limit={self._limit})"

    def __len__(self) -> int:
        if self._num_samples is None or self._target is None or self.sequences:
            raise TypeError(f"the number of batches in {self.description} is not known before reading it")
        n = min(self._num_samples, self._limit or self._num_samples)
        return n // self._target if self._fixed else math.ceil(n / self._target)

    def first_sample(self) -> dict[str, np.ndarray]:
        """{input: array} of the first sample, each input cut on its own batch axis (inputs without
        one whole): what a batch-1 timing or shape question runs on."""
        first = next(iter(self))
        return {k: take_rows(a, self.axes.get(k, 0), slice(0, 1)) for k, a in first.feeds.items()}

    def __iter__(self) -> Iterator[Batch]:
        self.skipped = []
        batcher = _Batcher(self._target, self._fixed, self.axes)
        offset = taken = 0  # samples seen (indexes a labels array) / samples accepted
        for source, load in self._items():
            if self._limit is not None and taken >= self._limit:
                break
            try:
                loaded = load()
                feeds, rows = check_structure(loaded.inputs, self.specs, source, from_images=loaded.from_images)
                labels = self._item_labels(source, loaded.labels, offset, rows)
            except DataError as exc:
                self._bad(source, exc)
                offset += 1
                continue
            offset += rows
            cut = (self._target if self._target and (loaded.collection or self._fixed or loaded.on_disk
                                                     or self.sequences) else rows)
            whole = not loaded.collection and not self._fixed and rows > 1
            fresh = loaded.first_row == 0  # the next piece yielded starts its sequence
            for start in range(0, rows, cut):
                stop = min(start + cut, rows)
                if self._limit is not None:
                    stop = min(stop, start + self._limit - taken)
                if stop <= start:
                    break
                piece = self._piece(source, feeds, labels, rows, start, stop, loaded)
                if piece is not None:
                    n = _rows(piece[0], self.axes)
                    taken += n
                    if self.sequences:
                        yield Batch(*piece, rows=n, sequence_start=fresh)
                        fresh = False
                    else:
                        yield from batcher.add(*piece, whole=whole)
        yield from batcher.flush(final=True)
        if self.skipped:
            log.warning("skipped %d bad sample(s) of %s", len(self.skipped), self.description)
        if isinstance(self._labels, np.ndarray) and self._limit is None and offset != len(self._labels):
            log.warning("labels hold %d entries but %s has %d samples", len(self._labels), self.description, offset)
        if taken == 0:
            if self.skipped:
                raise DataError(
                    f"all {len(self.skipped)} sample(s) of {self.description} were skipped as bad; "
                    f"the first: {self.skipped[0][1]}"
                )
            raise DataError(f"no samples found in {self.description}.")

    def _piece(
        self, source: str, feeds: dict[str, np.ndarray], labels: np.ndarray | None, rows: int, start: int, stop: int,
        loaded: Loaded,
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None, str] | None:
        """Rows [start, stop) of an item, cast and free of NaN/Inf; None if nothing is left."""
        at, total = loaded.first_row, loaded.file_rows or rows  # numbered as in the file
        src = (source if (at + start, at + stop) == (0, total) else f"{source}[{at + start}]" if stop - start == 1
               else f"{source}[{at + start}:{at + stop}]")
        if (start, stop) != (0, rows):
            feeds = {k: take_rows(v, self.axes.get(k, 0), slice(start, stop)) for k, v in feeds.items()}
            labels = None if labels is None else labels[start:stop]
        try:
            feeds = {s.name: _in_memory(cast(feeds[s.name], s, src)) for s in self.specs}
        except DataError as exc:
            self._bad(src, exc)
            return None
        bad, message = nonfinite_rows(feeds, stop - start, src, at + start, self.axes)
        if not message:
            return feeds, labels, src
        if not self._skip_bad:
            raise DataError(message)
        for i in np.flatnonzero(bad):
            self.skipped.append((source if total == 1 else f"{source}[{at + start + i}]", message))
        keep = ~bad
        if not keep.any():
            return None
        feeds = {k: take_rows(v, self.axes.get(k, 0), np.flatnonzero(keep)) for k, v in feeds.items()}
        return feeds, None if labels is None else labels[keep], src

    def _item_labels(self, source: str, data_labels: Any, offset: int, rows: int) -> np.ndarray | None:
        """Labels of one item: the `labels` argument wins over labels that came with the data."""
        given = self._labels
        if callable(given):
            try:
                data_labels = given(source)
            except Exception as exc:  # the user's function: say which source it failed on
                raise DataError(f"{source}: the labels function raised {type(exc).__name__}: {exc}") from None
        elif given is not None:
            if offset + rows > len(given):
                raise DataError(
                    f"{source}: the labels hold {len(given)} entries, but the data has more samples "
                    f"(at least {offset + rows}); give one label per sample."
                )
            return given[offset : offset + rows]
        if data_labels is None:
            return None
        arr = to_array(data_labels, source, "labels")
        if arr.ndim == 0:
            return np.full(rows, arr)
        if arr.shape[0] != rows:
            raise DataError(f"{source}: {arr.shape[0]} labels for {rows} sample(s); give one label per sample.")
        return arr

    def _bad(self, source: str, exc: DataError) -> None:
        if not self._skip_bad:
            raise exc
        log.debug("skipping %s: %s", source, exc)
        self.skipped.append((source, str(exc)))


def _in_memory(x: np.ndarray) -> np.ndarray:
    """A plain, C-contiguous array in RAM (a memory-mapped slice is read here, one piece at a time)."""
    if isinstance(x, np.memmap) or not x.flags.c_contiguous:
        return np.array(x, order="C")
    return x


def _rows(feeds: dict[str, np.ndarray], axes: dict[str, int | None]) -> int:
    """Samples in `feeds`: along the first input that has a batch axis (1 if none has)."""
    for k, v in feeds.items():
        axis = axes.get(k, 0)
        if axis is not None and v.ndim > axis:
            return int(v.shape[axis])
    return 1


def _target_batch(specs: Sequence[InputSpec], batch_size: int) -> tuple[int | None, bool]:
    """(samples per batch, whether the model fixes it); None: no regrouping (an input of unknown
    rank, or no input with a batch axis)."""
    batched = [s for s in specs if s.batch_axis is not None]
    if any(s.rank is None for s in specs) or not batched:
        return None, False
    fixed = {s.batch_dim for s in batched if isinstance(s.batch_dim, int)}
    if len(fixed) > 1:
        return None, False
    if fixed:
        k = int(fixed.pop())
        if batch_size not in (1, k):
            raise ConfigError(
                f"the model's batch size is fixed to {k}; batch_size={batch_size} cannot be used. "
                f"Leave batch_size at 1 or set it to {k}."
            )
        return k, True
    return batch_size, False


class _Batcher:
    """Regroups pieces into batches of `target` samples; holds at most one batch."""

    def __init__(self, target: int | None, fixed: bool, axes: dict[str, int | None]) -> None:
        self.target, self.fixed, self.axes = target, fixed, axes
        self.buf: list[tuple[dict[str, np.ndarray], np.ndarray | None, str]] = []
        self.rows = 0

    def add(
        self, feeds: dict[str, np.ndarray], labels: np.ndarray | None, source: str, *, whole: bool
    ) -> Iterator[Batch]:
        if self.target is None or whole:
            yield from self.flush()
            yield Batch(feeds, labels, source, rows=_rows(feeds, self.axes))
            return
        if self.buf and not self._fits(feeds, labels):
            if self.fixed:
                raise DataError(
                    f"{source}: cannot batch it with {self.buf[0][2]}: shapes or labels differ "
                    f"({_shapes(feeds)} vs {_shapes(self.buf[0][0])}) and the model's batch size "
                    f"is fixed to {self.target}. Give all samples one shape."
                )
            yield from self.flush()
        n, start = _rows(feeds, self.axes), 0
        while start < n:
            take = min(self.target - self.rows, n - start)
            part = feeds if take == n else {k: take_rows(v, self.axes.get(k, 0), slice(start, start + take))
                                            for k, v in feeds.items()}
            part_labels = labels if take == n or labels is None else labels[start : start + take]
            self.buf.append((part, part_labels, source))
            self.rows += take
            start += take
            if self.rows == self.target:
                yield from self.flush()

    def flush(self, final: bool = False) -> Iterator[Batch]:
        if not self.buf:
            return
        buf, rows = self.buf, self.rows
        self.buf, self.rows = [], 0
        if final and self.fixed and self.target is not None and rows < self.target:
            log.warning(
                "dropping the last %d sample(s) (%s ...): the model's batch size is fixed to %d",
                rows, buf[0][2], self.target,
            )
            return
        if len(buf) == 1:
            yield Batch(*buf[0], rows=rows)
            return
        # along each input's own batch axis; an input without one is the same in every piece
        feeds = {k: buf[0][0][k] if self.axes.get(k, 0) is None else
                 np.concatenate([p[0][k] for p in buf], axis=self.axes.get(k, 0)) for k in buf[0][0]}
        labels = None if buf[0][1] is None else np.concatenate([p[1] for p in buf])  # type: ignore[misc]
        sources = [p[2] for p in buf]
        source = sources[0] if len(set(sources)) == 1 else f"{sources[0]} .. {sources[-1]}"
        yield Batch(feeds, labels, source, rows=rows)

    def _fits(self, feeds: dict[str, np.ndarray], labels: np.ndarray | None) -> bool:
        ref, ref_labels, _ = self.buf[0]
        if (labels is None) != (ref_labels is None):
            return False
        if labels is not None and ref_labels is not None and labels.shape[1:] != ref_labels.shape[1:]:
            return False
        for k, v in feeds.items():
            axis, r = self.axes.get(k, 0), ref[k]
            if v.dtype != r.dtype or v.ndim != r.ndim:
                return False
            if axis is None:
                if v.shape != r.shape or not np.array_equal(v, r):
                    return False  # a constant that differs between samples starts a new batch
            elif v.shape[:axis] + v.shape[axis + 1:] != r.shape[:axis] + r.shape[axis + 1:]:
                return False
        return True


def _shapes(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k}: {v.shape}" for k, v in feeds.items())
