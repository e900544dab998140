"""Read TF.js "layers" weights (a ``*-weights_manifest.json`` and its ``.bin`` shards) into numpy.

Format: the manifest is a list of groups; each group's shards, concatenated in order, hold its
weights back to back in manifest order. A weight with a ``quantization`` entry is stored as
``uint8``/``uint16`` codes q (affine: value = q * scale + min) or as ``float16``; others are stored
raw in their ``dtype`` (little endian).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lowbit.errors import ModelError

_RAW = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4"), "bool": np.dtype("u1")}
_CODES = {"uint8": np.dtype("u1"), "uint16": np.dtype("<u2"), "float16": np.dtype("<f2")}


def _decode(buf: bytes, offset: int, spec: dict) -> tuple[np.ndarray, int]:
    """One weight starting at ``offset`` of its group's bytes -> (array in ``spec['dtype']``, next offset)."""
    shape = tuple(int(d) for d in spec["shape"])
    count = math.prod(shape)
    quant = spec.get("quantization")
    if spec["dtype"] not in _RAW:
        raise ModelError(f"TF.js weight '{spec['name']}' has unsupported dtype {spec['dtype']!r}.")
    stored = _CODES.get(quant["dtype"]) if quant else _RAW[spec["dtype"]]
    if stored is None:
        raise ModelError(f"TF.js weight '{spec['name']}' has unsupported quantization {quant['dtype']!r}.")
    end = offset + count * stored.itemsize
    if end > len(buf):
        raise ModelError(f"TF.js weight '{spec['name']}' runs past the end of its shards ({end} > {len(buf)} bytes).")
    raw = np.frombuffer(buf, dtype=stored, count=count, offset=offset)
    if quant and quant["dtype"] != "float16":
        # affine dequantization in float64, then rounded once to the target dtype
        values = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
    else:
        values = raw
    return values.astype(_RAW[spec["dtype"]].newbyteorder("=")).reshape(shape), end


def read_tfjs_weights(manifest: Path) -> dict[str, np.ndarray]:
    """All weights of a TF.js weights manifest, dequantized, in manifest order.

    >>> w = read_tfjs_weights(Path("face_recognition_model-weights_manifest.json"))  # doctest: +SKIP
    >>> w["fc"].shape
    (256, 128)
    """
    manifest = Path(manifest)
    try:
        groups = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the TF.js weights manifest {manifest}: {e}") from None
    weights: dict[str, np.ndarray] = {}
    for group in groups:
        shards = [manifest.parent / p for p in group["paths"]]
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise ModelError(f"TF.js weight shards missing: {', '.join(missing)}.")
        buf = b"".join(s.read_bytes() for s in shards)
        offset = 0
        for spec in group["weights"]:
            weights[spec["name"]], offset = _decode(buf, offset, spec)
        if offset != len(buf):
            raise ModelError(f"TF.js shards of {manifest.name} hold {len(buf)} bytes, the manifest describes {offset}.")
    return weights
