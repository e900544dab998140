"""Load stage: an ONNX file, an onnx.ModelProto or a torch.nn.Module becomes a checked ModelProto.

The caller's model is never modified: lowbit works on its own copy.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from lowbit.errors import ModelError
from lowbit.io import read_regular_file
from lowbit.load.checks import check_graph, check_tensor_sizes, check_text
from lowbit.load.external_data import load_external_data_safely
from lowbit.load.upgrade import upgrade_opset

log = logging.getLogger(__name__)

MIN_OPSET = 13
EXPORT_OPSET = 17


@dataclass
class LoadedModel:
    """A model in lowbit's hands: its proto (a private copy), a display name and where it came from."""

    proto: onnx.ModelProto
    name: str
    source: str
    path: Path | None = None
    # every file the model was read from (the .onnx and its external data): inputs no output may replace
    files: tuple[Path, ...] = ()


def load_model(model: Any, example_inputs: Any = None, input_names: list[str] | None = None) -> LoadedModel:
    """Load a path, ModelProto or torch.nn.Module (with `example_inputs`) as a checked ONNX model.

    >>> m = load_model("mobilenet_v2.onnx")
    """
    if isinstance(model, (str, Path)):
        return _load_path(Path(model))
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        proto = _check(proto, "the given ModelProto")
        return LoadedModel(proto, proto.graph.name or "model", "onnx.ModelProto")
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise ModelError("a torch.nn.Module needs example_inputs (a tensor or tuple of tensors of the "
                             "shape the model takes, batch axis first) so lowbit can export it to ONNX.")
        proto = export_torch(model, example_inputs, input_names)
        name = type(model).__name__
        return LoadedModel(proto, name, f"torch.nn.Module {name}")
    raise ModelError(f"cannot load a model from {type(model).__name__}: give a path to an .onnx file, an "
                     "onnx.ModelProto, or a torch.nn.Module with example_inputs.")


# protobuf cannot parse a message of 2 GiB or more: larger models keep their weights as external data
MAX_MODEL_FILE_BYTES = 2**31 - 1


def _load_path(path: Path) -> LoadedModel:
    # refuses devices, FIFOs and symlinks to them (/dev/zero would be read until memory runs out)
    # and over-large files, before reading a byte
    data = read_regular_file(path, "model file", ModelError, MAX_MODEL_FILE_BYTES)
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not an ONNX model, or it is truncated or corrupt ({type(e).__name__}). "
                         "Re-export it or check the download.") from None
    del data
    if not proto.graph.node and not proto.graph.input:
        raise ModelError(f"{path} is not an ONNX model: it holds no graph (is it another kind of file?).")

    check_text(proto, str(path))
    check_tensor_sizes(proto.graph, str(path))  # before reading external data or allocating
    files = load_external_data_safely(proto, path.parent)
    proto = _check(proto, str(path))
    return LoadedModel(proto, path.stem, str(path), path, (path, *files))


def opset_of(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _check(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """The checked model; opsets older than MIN_OPSET raised to it (lowbit.load.upgrade)."""
    check_text(proto, where)
    check_tensor_sizes(proto.graph, where)
    check_graph(proto.graph, {imp.domain for imp in proto.opset_import}, where)
    _check_onnx(proto, where)
    if opset_of(proto) < MIN_OPSET:
        proto = upgrade_opset(proto, where, MIN_OPSET)
        _check_onnx(proto, where)
    return proto


def _check_onnx(proto: onnx.ModelProto, where: str) -> None:
    try:
        # The checker cannot take protos over 2 GB in memory; those are checked by path elsewhere.
        if proto.ByteSize() < 2**31 - 1:
            onnx.checker.check_model(proto)
    except Exception as e:  # ValidationError, and UnicodeDecodeError etc. from corrupt string fields
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{where} fails the ONNX checker ({type(e).__name__}): {first}") from None


def export_torch(module: Any, example_inputs: Any, input_names: list[str] | None = None) -> onnx.ModelProto:
    """Export a torch module to ONNX (opset 17, batch axis dynamic) without changing the module."""
    import torch

    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise ModelError("example_inputs must be a torch.Tensor or a tuple of tensors.")
    names = input_names or (["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))])
    buf = io.BytesIO()
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript exporter folds BatchNorm into Conv in eval mode and needs no onnxscript.
            torch.onnx.export(
                module, args, buf, dynamo=False, opset_version=EXPORT_OPSET, input_names=names,
                output_names=["output"], do_constant_folding=True,
                dynamic_axes={n: {0: "batch"} for n in names + ["output"]},
            )
    except Exception as e:  # torch raises many types; the user needs the gist, not the trace
        raise ModelError(f"could not export the torch module to ONNX: {type(e).__name__}: {e}") from None
    finally:
        module.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    proto.graph.name = type(module).__name__
    return proto
