"""External-data tensors, loaded without trusting the file: locations must stay inside the model's
folder, and declared sizes must match the data before anything is allocated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from lowbit.errors import ModelError


def _tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _tensors(g)


def load_external_data_safely(proto: onnx.ModelProto, base: Path) -> None:
    """Read each external tensor's bytes into the proto, refusing paths outside `base`."""
    base = base.resolve()
    for t in _tensors(proto.graph):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = (base / loc).resolve()
        if Path(loc).is_absolute() or (base != target and base not in target.parents):
            raise ModelError(f"tensor '{t.name}' points to external data '{loc}' outside the model's folder "
                             f"{base}; refusing to read it (only files inside that folder are allowed).")
        if not target.is_file():
            raise ModelError(f"tensor '{t.name}' needs external data file '{loc}', which is missing next to the model.")
        offset = int(info.get("offset", 0))
        n_elems = int(np.prod(t.dims)) if len(t.dims) else 1
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        need = int(info.get("length", n_elems * itemsize))
        have = target.stat().st_size
        if need != n_elems * itemsize or offset < 0 or offset + need > have:
            raise ModelError(f"tensor '{t.name}' declares shape {list(t.dims)} ({n_elems * itemsize} bytes) but its "
                             f"external data '{loc}' holds {max(have - offset, 0)} bytes from offset {offset}.")
        with open(target, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(need)
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
