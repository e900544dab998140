"""Integer grids lowbit quantizes to, with their ONNX element types."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto


@dataclass(frozen=True)
class QDtype:
    """An integer grid: `bits` wide, signed or not. `narrow` grids drop the most negative value
    (int8 weights use [-127, 127] so that symmetric scales map +-max exactly)."""

    name: str
    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def bounds(self, narrow: bool = False) -> tuple[int, int]:
        """(qmin, qmax); `narrow` drops qmin of a signed grid so the grid is symmetric about 0."""
        lo = self.qmin + 1 if (narrow and self.signed) else self.qmin
        return lo, self.qmax

    @property
    def storage(self) -> np.dtype:
        """The numpy dtype that holds this grid's values (int4 lives in int8 until packed)."""
        if self.bits <= 8:
            return np.dtype(np.int8 if self.signed else np.uint8)
        if self.bits <= 16:
            return np.dtype(np.int16 if self.signed else np.uint16)
        return np.dtype(np.int32 if self.signed else np.uint32)

    @property
    def onnx_type(self) -> int:
        """The ONNX TensorProto element type for this grid."""
        table = {
            ("int", 4): TensorProto.INT4, ("uint", 4): TensorProto.UINT4,
            ("int", 8): TensorProto.INT8, ("uint", 8): TensorProto.UINT8,
            ("int", 16): TensorProto.INT16, ("uint", 16): TensorProto.UINT16,
            ("int", 32): TensorProto.INT32,
        }
        # 2-7 bit grids are stored in 8-bit containers with a narrower range (exact in int8 QDQ)
        bits = self.bits if self.bits in (4, 8, 16, 32) else (8 if self.bits < 8 else 32)
        return table[("int" if self.signed else "uint", bits)]

    def __str__(self) -> str:
        return self.name


int4 = QDtype("int4", 4, True)
"""Signed 4-bit grid [-8, 7] (weights of `w4a8` / `int4`)."""
uint4 = QDtype("uint4", 4, False)
"""Unsigned 4-bit grid [0, 15]."""
int8 = QDtype("int8", 8, True)
"""Signed 8-bit grid [-128, 127] (weights)."""
uint8 = QDtype("uint8", 8, False)
"""Unsigned 8-bit grid [0, 255] (activations)."""
int16 = QDtype("int16", 16, True)
uint16 = QDtype("uint16", 16, False)
int32 = QDtype("int32", 32, True)

_BY_NAME = {d.name: d for d in (int4, uint4, int8, uint8, int16, uint16, int32)}


def dtype_by_name(name: str) -> QDtype:
    """The QDtype called `name` ('int8', 'uint8', 'int4', ...). Weight grids of 5-7 bits are
    spelled 'int5'..'int7': they are stored in int8 with a narrower range."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    for prefix, signed in (("uint", False), ("int", True)):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            bits = int(name[len(prefix):])
            if 2 <= bits <= 8:
                return QDtype(name, bits, signed)
    raise ValueError(f"unknown integer dtype '{name}'; use one of {sorted(_BY_NAME)} or int2..int8")
