"""Which axis of each model input holds samples: inferred from the graph, or given.

Most inputs carry samples on axis 0, but not all: a recurrent state `[layers, B, hidden]` has
them on axis 1, and a scalar (a sample rate) has none and goes unchanged with every batch. The
inference only moves an input off axis 0 where the graph says so without doubt; anything else
is the user's to say (`batch_axes={"state": 1}`, CLI `--batch-axis state=1`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from lowbit.errors import ConfigError, did_you_mean

if TYPE_CHECKING:  # types only: lowbit.data.spec resolves batch axes with this module
    from lowbit.data.spec import InputSpec

log = logging.getLogger(__name__)

# dim names that mean "samples" (exporters write batch, batch_size, N, B, bs, ...)
_BATCH_NAME = re.compile(r"^(n|b|bs|batch|batch_?size|nbatch|num_batch(es)?)$|batch", re.IGNORECASE)


def _named_batch_axes(spec: InputSpec) -> list[int]:
    return [i for i, d in enumerate(spec.shape or ()) if isinstance(d, str) and _BATCH_NAME.search(d)]


def infer_axis(spec: InputSpec, others: Sequence[InputSpec]) -> int | None:
    """The batch axis of `spec` as far as the graph shows it (see module doc), in this order:
    rank 0 or unknown shape; a dim named like a batch; a dim named as another input's axis-0 dim;
    axis 0 fixed > 1 with exactly one dynamic axis beside inputs whose axis 0 is dynamic
    (`[2, ?, 128]`: a fixed axis 0 that differs from 1 cannot be a batch shared with them).

    >>> x = InputSpec("input", ("B", 576))
    >>> infer_axis(InputSpec("state", (2, "B", 128)), [x]), infer_axis(InputSpec("sr", ()), [x])
    (1, None)
    """
    shape = spec.shape
    if shape is None:
        return 0
    if not shape:
        return None
    named = _named_batch_axes(spec)
    if len(named) == 1:
        return named[0]
    others = [o for o in others if o.name != spec.name and o.shape]
    lead = {o.shape[0] for o in others if isinstance(o.shape[0], str)}
    shared = [i for i, d in enumerate(shape) if isinstance(d, str) and d in lead]
    if len(shared) == 1:
        return shared[0]
    # a fully fixed input (an LSTM's h0 [1, 1, 128]) may be a constant or fix the batch to 1:
    # not for the graph to say, it keeps axis 0 (batch_axes={"h0": None} says it is a constant)
    dynamic_lead = any(not isinstance(o.shape[0], int) for o in others)
    dynamic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if dynamic_lead and isinstance(shape[0], int) and shape[0] > 1 and len(dynamic) == 1:
        return dynamic[0]
    return 0


def parse_axis(text: str) -> tuple[str, int | None]:
    """'state=1' -> ('state', 1); 'sr=none' -> ('sr', None): the CLI's --batch-axis value.

    >>> parse_axis("state=1"), parse_axis("sr=none")
    (('state', 1), ('sr', None))
    """
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise ConfigError(f"--batch-axis takes NAME=AXIS (e.g. state=1, or sr=none for no batch axis); got '{text}'.")
    v = value.strip().lower()
    if v in ("none", "-", ""):
        return name, None
    try:
        return name, int(v)
    except ValueError:
        raise ConfigError(f"--batch-axis {text}: the axis must be a whole number or 'none'; got '{value}'.") from None


def resolve_batch_axes(specs: Sequence[InputSpec], given: Mapping[str, int | None] | None = None) -> list[InputSpec]:
    """`specs` with their batch axes: `given` ones (checked: known names, axes within the rank;
    negative axes count from the end), the rest inferred (`infer_axis`). Logs the inferred axes
    that are not 0.

    >>> [s.batch_axis for s in resolve_batch_axes([InputSpec("x", ("N", 4)), InputSpec("s", (2, None, 8))],
    ...                                            {"s": 1})]
    [0, 1]
    """
    given = dict(given or {})
    by_name = {s.name: s for s in specs}
    for name, axis in given.items():
        if name not in by_name:
            raise ConfigError(f"batch axis given for '{name}', which is no input of the model; its inputs are "
                              f"{', '.join(by_name)}.{did_you_mean(name, by_name)}")
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise ConfigError(f"the batch axis of '{name}' must be an int or None (no batch axis); got {axis!r}.")
    out = []
    for s in specs:
        if s.name in given:
            axis = given[s.name]
            if axis is not None and s.rank is not None:
                if not -s.rank <= axis < s.rank:
                    raise ConfigError(
                        f"batch axis {axis} of '{s.name}' is out of range: the input has rank {s.rank} "
                        f"{s.describe_shape()}; give an axis in 0..{s.rank - 1}, or none."
                        if s.rank else
                        f"'{s.name}' is a scalar (rank 0): it has no batch axis; give {s.name}=none.")
                axis %= s.rank
        else:
            axis = infer_axis(s, specs)
            if axis != 0:
                log.info("input '%s' %s: %s", s.name, replace(s, batch_axis=axis).describe_shape(),
                         "no batch axis (fed unchanged with every batch)" if axis is None else f"batch axis {axis}")
        out.append(replace(s, batch_axis=axis))
    return out


def output_batch_axis(shape: Sequence[int], samples: int, single: Sequence[int] | None = None) -> int | None:
    """The axis of one model output holding a batch's `samples`, from its run-time `shape` (graphs
    declare output shapes wrongly: ddddocr says `[1, seqlen]` and returns time-major `(T, 1, C)`).
    The axis of that length; where several have it (a `(T, B, C)` head with T == B), the one that
    became 1 in `single`, the same output for the batch's first sample alone; else the first.
    None: no axis has that length, the whole output is one sample (a final LSTM state).
    At `samples == 1` any candidate gives the same per-sample array.

    >>> output_batch_axis((20, 1, 8210), 1), output_batch_axis((8, 22, 2100), 8)
    (1, 0)
    >>> output_batch_axis((20, 20, 37), 20, single=(20, 1, 37)), output_batch_axis((1, 128), 4)
    (1, None)
    """
    candidates = [i for i, d in enumerate(shape) if d == samples]
    if len(candidates) > 1 and single is not None and len(single) == len(shape):
        moved = [i for i in candidates if single[i] == 1 and all(
            a == b for j, (a, b) in enumerate(zip(shape, single)) if j != i)]
        if len(moved) == 1:
            return moved[0]
    return candidates[0] if candidates else None
