"""What a model input takes (`InputSpec`) and what the data layer yields (`Batch`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import numpy as np
from onnx import helper

from lowbit.data.axes import resolve_batch_axes
from lowbit.errors import ModelError

if TYPE_CHECKING:
    import onnx

Dim = Union[int, str, None]


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape (ints fixed; str or None dynamic), numpy dtype and the axis
    that holds samples (`batch_axis`; None: the input has none and is fed unchanged with every
    batch, e.g. a scalar sample rate; a rank-0 input always has none). `default`: the array fed
    where the data leaves the input out (a recurrent model's initial state).

    `shape` is None only when the model declares no shape at all; then no rank or dim checks run.

    >>> InputSpec("pixel_values", ("N", 3, 224, 224), np.float32).rank
    4
    >>> InputSpec("state", (2, "B", 128), np.float32, batch_axis=1).batch_dim
    'B'
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    batch_axis: int | None = 0
    default: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
            if not self.shape:
                object.__setattr__(self, "batch_axis", None)

    @property
    def rank(self) -> int | None:
        """Number of axes, or None when the model declares no shape."""
        return None if self.shape is None else len(self.shape)

    @property
    def batch_dim(self) -> Dim:
        """The batch axis's dim: an int when fixed, else its name or None (also: no batch axis)."""
        if not self.shape or self.batch_axis is None or self.batch_axis >= len(self.shape):
            return None
        return self.shape[self.batch_axis]

    def describe_shape(self) -> str:
        """The shape for messages: '(N, 3, 224, 224)', dynamic dims by name, '?' when unnamed.

        >>> InputSpec("x", (None, 3, "h"), np.float32).describe_shape()
        '(N, 3, h)'
        """
        if self.shape is None:
            return "(any shape)"
        dims = []
        for i, d in enumerate(self.shape):
            dims.append(str(d) if d is not None else ("N" if i == self.batch_axis else "?"))
        return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch for the model: `feeds` (input name -> array, samples along each input's batch
    axis), optional `labels` (first axis = samples) and `source` (file or index it came from, for
    messages). `rows`: the number of samples, where the data layer knows it (inputs whose batch
    axis is not 0). `sequence_start`: for stateful data (`lowbit.data.stateful`), True on the first
    chunk of a sequence (its state inputs hold the initial state), False on later chunks (their
    state comes from the previous chunk's outputs); None for data without state.

    >>> b = Batch({"x": np.zeros((2, 3), np.float32)}, None, "array[0:2]")
    >>> b.size
    2
    """

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    rows: int | None = None
    sequence_start: bool | None = None

    @property
    def size(self) -> int:
        """Number of samples (`rows`, else the first axis of the first batched input; 1 if none)."""
        if self.rows is not None:
            return self.rows
        for a in self.feeds.values():
            if a.ndim:
                return int(a.shape[0])
        return 1


def specs_from_onnx(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs a caller must feed (initializers excluded), in graph order, with their
    batch axes inferred (`lowbit.data.axes`).

    >>> specs = specs_from_onnx(onnx.load("model.onnx"))  # doctest: +SKIP
    >>> specs[0]                                           # doctest: +SKIP
    InputSpec(name='input', shape=('N', 3, 224, 224), dtype=dtype('float32'))
    """
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise ModelError(
                f"graph input '{value.name}' is not a tensor ({value.type.WhichOneof('value')}); "
                "lowbit feeds tensor inputs only."
            )
        tensor_type = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        shape: tuple[Dim, ...] | None = None
        if tensor_type.HasField("shape"):
            dims: list[Dim] = []
            for d in tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(int(d.dim_value))
                else:
                    dims.append(d.dim_param or None)
            shape = tuple(dims)
        specs.append(InputSpec(value.name, shape, dtype))  # type: ignore[arg-type]

    return resolve_batch_axes(specs)  # each input's batch axis, as far as the graph shows it
