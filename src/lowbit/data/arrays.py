"""One sample (or batch) of arrays, checked against the model's inputs.

Pure functions: each takes arrays and `InputSpec`s and either returns arrays that the model can
take or raises `DataError` naming the source, the input, what was wrong and what would be right.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lowbit.data.spec import InputSpec
from lowbit.errors import DataError, did_you_mean

LABEL_KEYS = ("labels", "label", "y")


def is_tensor(x: Any) -> bool:
    """True for a torch tensor (duck-typed, so torch is not imported here)."""
    return hasattr(x, "detach") and hasattr(x, "numpy") and hasattr(x, "shape")


def to_array(x: Any, source: str, what: str) -> np.ndarray:
    """`x` as a numpy array (torch tensors through `.numpy()`); non-numeric data is a DataError.

    >>> to_array([1.0, 2.0], "list[0]", "input 'x'").dtype
    dtype('float64')
    """
    if is_tensor(x):
        x = x.detach().cpu().numpy()
    elif not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{source}: {what} is not an array ({type(x).__name__}): {exc}.") from None
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{source}: {what} holds {x.dtype} data ({type(x).__name__}); model inputs take numeric "
            "arrays. Ragged lists become object arrays: pad or crop samples to one shape."
        )
    return x


def split_sample(element: Any, specs: Sequence[InputSpec], source: str) -> tuple[dict[str, Any], Any]:
    """Split one element of user data into ({input name: array-like}, labels or None).

    Accepted: a bare array (single-input models), a dict by input name (a `labels`/`label`/`y`
    key that is no input name holds labels), a tuple of len(specs) arrays in spec order, a tuple
    of len(specs) + 1 (last = labels), or an (inputs, labels) pair whose inputs are a dict/tuple.

    >>> spec = InputSpec("x", ("N", 4), np.float32)
    >>> split_sample((np.zeros(4), 3), [spec], "list[0]")[1]
    3
    """
    names = [s.name for s in specs]
    if isinstance(element, Mapping):
        inputs = dict(element)
        label_keys = [k for k in LABEL_KEYS if k in inputs and k not in names]
        labels = inputs.pop(label_keys[0]) if label_keys else None
        return inputs, labels
    if isinstance(element, (tuple, list)) and not all(isinstance(e, (int, float, np.number)) for e in element):
        items = list(element)
        if len(items) == 2 and isinstance(items[0], (Mapping, tuple, list)):
            inputs, _ = split_sample(items[0], specs, source)
            return inputs, items[1]
        if len(items) == len(names):
            return dict(zip(names, items)), None
        if len(items) == len(names) + 1:
            return dict(zip(names, items[:-1])), items[-1]
        raise DataError(
            f"{source}: got a tuple of {len(items)} items, but the model has {len(names)} input(s) "
            f"({', '.join(names)}). Give one array per input in that order, optionally followed "
            "by labels, or a dict keyed by input name."
        )
    if len(names) != 1:
        raise DataError(
            f"{source}: got a bare {type(element).__name__}, but the model has {len(names)} inputs "
            f"({', '.join(names)}). Feed a dict keyed by input name or a tuple in that order."
        )
    return {names[0]: element}, None


def _permutation_hint(expected: Sequence[Any], got: Sequence[int], from_images: bool) -> str:
    """A hint when transposing the non-batch axes of `got` would match `expected`."""
    if len(got) != len(expected) or len(got) > 6:
        return ""
    for perm in itertools.permutations(range(len(got))):
        if perm == tuple(range(len(got))):
            continue
        if all(not isinstance(e, int) or got[p] == e for e, p in zip(expected, perm)):
            if len(got) == 3 and perm == (2, 0, 1):
                if from_images:
                    return " Looks like NHWC data for an NCHW input: set layout='NCHW' in the preprocessing."
                return " Looks like NHWC data for an NCHW input: transpose with x.transpose(0, 3, 1, 2)."
            if len(got) == 3 and perm == (1, 2, 0):
                if from_images:
                    return " Looks like NCHW data for an NHWC input: set layout='NHWC' in the preprocessing."
                return " Looks like NCHW data for an NHWC input: transpose with x.transpose(0, 2, 3, 1)."
            axes = ", ".join(str(p + 1) for p in perm)
            return f" A transpose would fix it: x.transpose(0, {axes})."
    return ""


def check_structure(
    inputs: Mapping[str, Any], specs: Sequence[InputSpec], source: str, *, from_images: bool = False
) -> tuple[dict[str, np.ndarray], int]:
    """Check names, rank, fixed dims, size and batch sizes; add a missing batch axis.

    Each input counts samples along its own `batch_axis`; an input without one (a scalar, a
    constant) is checked against its full declared shape and counts none. Reads shapes only,
    never the data (memory-mapped arrays stay on disk). Returns the feeds in spec order and the
    number of samples (rows).

    >>> spec = InputSpec("x", ("N", 3), np.float32)
    >>> feeds, rows = check_structure({"x": np.zeros(3)}, [spec], "array[0]")
    >>> feeds["x"].shape, rows
    ((1, 3), 1)
    """
    by_name = {s.name: s for s in specs}
    for name in inputs:
        if name not in by_name:
            raise DataError(
                f"{source}: unknown input name '{name}'; the model's inputs are "
                f"{', '.join(by_name)}.{did_you_mean(name, by_name)}"
            )
    feeds: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    for spec in specs:
        if spec.name not in inputs and spec.default is None:
            raise DataError(
                f"{source}: input '{spec.name}' is missing; the model needs {', '.join(by_name)} "
                f"and the data has {', '.join(inputs) or 'none'}. Add an array for '{spec.name}'."
            )
        x = to_array(inputs[spec.name] if spec.name in inputs else spec.default, source, f"input '{spec.name}'")
        if x.size == 0:
            raise DataError(
                f"{source}: input '{spec.name}' is empty (shape {x.shape}); "
                f"expected {spec.describe_shape()} with no zero-size axis."
            )
        axis = spec.batch_axis
        if spec.rank is not None:
            if axis is not None and x.ndim == spec.rank - 1:
                x = np.expand_dims(x, axis)  # a sample without batch axis
            elif x.ndim != spec.rank:
                one = (f" (or rank {spec.rank - 1} for one sample without its batch axis {axis})"
                       if axis is not None else " (it has no batch axis: the same value goes with every batch)")
                raise DataError(
                    f"{source}: input '{spec.name}' expects rank {spec.rank} {spec.describe_shape()}{one}, "
                    f"got rank {x.ndim} with shape {x.shape}."
                )
            _check_dims(x, spec, source, from_images)
            if axis is not None:
                rows[spec.name] = int(x.shape[axis])
        elif axis is not None and x.ndim > axis:
            rows[spec.name] = int(x.shape[axis])
        feeds[spec.name] = x
    if len(set(rows.values())) > 1:
        sizes = ", ".join(f"'{k}': {v} (axis {by_name[k].batch_axis})" for k, v in rows.items())
        raise DataError(
            f"{source}: inputs have different batch sizes ({sizes}); every input of one sample or "
            "batch must hold the same number of samples along its batch axis. If an input's samples "
            "lie on another axis, or it has none (a constant), say so: batch_axes={'name': 1} or "
            "{'name': None} (CLI --batch-axis name=1, --batch-axis name=none)."
        )
    return feeds, next(iter(rows.values()), 1)


def _check_dims(x: np.ndarray, spec: InputSpec, source: str, from_images: bool) -> None:
    assert spec.shape is not None
    # the batch axis is free: a fixed batch size is met by regrouping (see feeds._Batcher)
    for axis, (want, got) in enumerate(zip(spec.shape, x.shape)):
        if axis != spec.batch_axis and isinstance(want, int) and got != want:
            hint = _permutation_hint(spec.shape[1:], x.shape[1:], from_images) if spec.batch_axis == 0 else ""
            raise DataError(
                f"{source}: input '{spec.name}' expects shape {spec.describe_shape()}, got "
                f"{x.shape} (axis {axis} is {got}, should be {want}).{hint}"
            )


def take_rows(x: np.ndarray, axis: int | None, index: Any) -> np.ndarray:
    """Samples `index` (a slice or an index array) of `x` along its batch `axis`; `x` itself
    when it has none (a constant goes with every batch unchanged).

    >>> take_rows(np.zeros((2, 5, 3)), 1, slice(1, 3)).shape
    (2, 2, 3)
    """
    if axis is None:
        return x
    if isinstance(index, slice):
        return x[(slice(None),) * axis + (index,)]
    return np.take(x, index, axis=axis)


def cast(x: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    """`x` in the input's dtype. Float->float and int->int casts are done when no value is
    lost; int data to a float input or float data to an int input is a DataError.

    >>> cast(np.arange(3, dtype=np.int32), InputSpec("ids", ("N",), np.int64), "a").dtype
    dtype('int64')
    """
    want, have = spec.dtype, x.dtype
    if have == want or want.kind not in "biuf":
        return x
    where = f"{source}: input '{spec.name}' takes {want}"
    if want.kind == "f":
        if have.kind == "f":
            return x.astype(want)
        raise DataError(
            f"{where} but got integer data ({have}). Convert and scale it first, e.g. "
            "x.astype(np.float32) / 255 for uint8 pixels, or give an image folder with a "
            "declared preprocessing."
        )
    if want.kind in "iu":
        if have.kind == "b" or (have.kind in "iu" and np.can_cast(have, want)):
            return x.astype(want)
        if have.kind in "iu":
            info = np.iinfo(want)
            lo, hi = x.min(), x.max()
            if lo < info.min or hi > info.max:
                raise DataError(
                    f"{where} but the {have} data spans [{lo}, {hi}], outside {want}'s range "
                    f"[{info.min}, {info.max}]."
                )
            return x.astype(want)
        raise DataError(
            f"{where} but got float data ({have}). If these are token ids or indices, convert "
            f"with x.astype(np.{want.name})."
        )
    raise DataError(f"{where} (booleans) but got {have} data; convert with x.astype(bool).")


def nonfinite_rows(
    feeds: Mapping[str, np.ndarray], rows: int, source: str, first_row: int = 0,
    axes: Mapping[str, int | None] | None = None,
) -> tuple[np.ndarray, str]:
    """(mask of samples holding NaN or Inf, message saying how many and where; '' if none).
    Sample numbers and indices in the message count from `first_row` (the piece's offset);
    `axes`: each input's batch axis (default 0; None: a bad value spoils every sample).

    >>> mask, msg = nonfinite_rows({"x": np.array([[0.0], [np.nan]])}, 2, "a.npy")
    >>> mask.tolist(), "1 NaN" in msg
    ([False, True], True)
    """
    bad_rows = np.zeros(rows, dtype=bool)
    parts = []
    for name, x in feeds.items():
        if x.dtype.kind != "f":
            continue
        bad = ~np.isfinite(x)
        if not bad.any():
            continue
        n_nan = int(np.isnan(x).sum())
        n_inf = int(bad.sum()) - n_nan
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        axis = (axes or {}).get(name, 0)
        batched = axis is not None and x.ndim > axis and x.shape[axis] == rows
        if batched:
            first = (*first[:axis], first[axis] + first_row, *first[axis + 1:])
            row_bad = np.moveaxis(bad, axis, 0).reshape(rows, -1).any(axis=1)
        else:
            row_bad = np.ones(rows, dtype=bool)
        bad_rows |= row_bad
        samples = np.flatnonzero(row_bad) + first_row
        shown = ", ".join(str(i) for i in samples[:5]) + (", ..." if len(samples) > 5 else "")
        parts.append(
            f"input '{name}' has {n_nan} NaN and {n_inf} Inf value(s) in {len(samples)} of "
            f"{rows} sample(s) (sample {shown}; first at index {first})"
        )
    if not parts:
        return bad_rows, ""
    return bad_rows, (
        f"{source}: " + "; ".join(parts) + ". Clean the data, or pass skip_bad=True to skip such samples."
    )
