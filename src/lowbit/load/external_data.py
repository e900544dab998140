"""External-data tensors, loaded without trusting the file: every field is parsed and checked (a
location inside the model's folder, a regular file, integer offset and length, a known element
type, sizes that match the data) before anything is allocated or read."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from lowbit.errors import ModelError
from lowbit.io import check_outputs, read_regular_file


def _tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _tensors(g)


def _int_field(t: TensorProto, info: dict[str, str], key: str, default: int) -> int:
    text = info.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ModelError(f"tensor '{t.name}': external data field '{key}' must be a whole number of bytes; "
                         f"got {text!r}.") from None
    if value < 0:
        raise ModelError(f"tensor '{t.name}': external data field '{key}' must be 0 or more; got {value}.")
    return value


def _location(t: TensorProto, info: dict[str, str], base: Path) -> Path:
    loc = info.get("location", "")
    if not loc or "\0" in loc:
        raise ModelError(f"tensor '{t.name}' has an invalid external data location {loc!r}: it must name a file "
                         "next to the model.")
    target = (base / loc).resolve()
    if Path(loc).is_absolute() or (base != target and base not in target.parents):
        raise ModelError(f"tensor '{t.name}' points to external data '{loc}' outside the model's folder "
                         f"{base}; refusing to read it (only files inside that folder are allowed).")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise ModelError(f"tensor '{t.name}' needs external data file '{loc}', which is missing next to the "
                         "model.") from None
    except OSError as e:
        raise ModelError(f"tensor '{t.name}': cannot read external data file '{loc}': {e.strerror}.") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"tensor '{t.name}': external data '{loc}' is not a regular file; refusing to read it.")
    return target


def load_external_data_safely(proto: onnx.ModelProto, base: Path) -> list[Path]:
    """Read each external tensor's bytes into the proto, refusing paths outside `base`. Returns
    the files read (inputs that no output may replace)."""
    base = base.resolve()
    files: list[Path] = []
    for t in _tensors(proto.graph):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        target = _location(t, info, base)
        offset = _int_field(t, info, "offset", 0)
        if any(d < 0 for d in t.dims):
            raise ModelError(f"tensor '{t.name}' declares a negative dimension {list(t.dims)}.")
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, ValueError, TypeError):
            raise ModelError(f"tensor '{t.name}' has unknown element type {t.data_type}; the file is corrupt or "
                             "uses a type lowbit cannot read.") from None
        n_elems = int(np.prod(t.dims, dtype=np.float64)) if len(t.dims) else 1
        size = n_elems * itemsize
        need = _int_field(t, info, "length", size)
        have = target.stat().st_size
        if need != size or offset + need > have:
            raise ModelError(f"tensor '{t.name}' declares shape {list(t.dims)} ({size} bytes) but its "
                             f"external data '{info['location']}' holds {max(have - offset, 0)} bytes from offset "
                             f"{offset}.")
        with open(target, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(need)
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
        if target not in files:
            files.append(target)
    return files


def external_data_files(model_path: str | Path, outputs: list[str | Path]) -> list[Path]:
    """The external-data files an .onnx file reads, so that no output replaces one. They lie inside
    the model's folder, so the model is parsed only when an existing output lies there too; a model
    that cannot be read gives [] (loading it reports why)."""
    base = Path(model_path).resolve().parent
    if not any(Path(o).exists() and base in Path(o).resolve().parents for o in outputs):
        return []
    try:
        proto = onnx.load_model_from_string(read_regular_file(model_path, "model file", ModelError))
    except Exception:  # a corrupt or unreadable model is reported by load_model, with its reason
        return []
    files = []
    for t in _tensors(proto.graph):
        loc = {e.key: e.value for e in t.external_data}.get("location", "")
        if t.data_location == TensorProto.EXTERNAL and loc and "\0" not in loc:
            files.append(base / loc)
    return files


def check_outputs_beside(outputs: Mapping[str, Any], inputs: Mapping[str, Any], models: Iterable[Any]
                         ) -> dict[str, Path]:
    """`lowbit.io.check_outputs`, counting the external-data files of each `models` path as inputs
    too: no output may replace a file a model reads."""
    paths = [p for p in outputs.values() if isinstance(p, (str, os.PathLike)) and str(p)]
    beside = {f"external data of {m}": external_data_files(m, paths) for m in models
              if paths and isinstance(m, (str, os.PathLike)) and str(m)}
    return check_outputs(outputs, {**inputs, **beside})
