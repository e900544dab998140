"""Record the plan and lowbit's version in a model's metadata_props, and read them back."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import zlib

import numpy as np
import onnx

from lowbit.errors import ConfigError, ModelError
from lowbit.package import __version__
from lowbit.plan.fit import plan_size_limit
from lowbit.plan.quant_plan import QuantPlan

SCALE, ZERO_POINT = "_s", "_z"  # as lowbit.emit.qdq names them (not imported: qdq imports this module)

PLAN_KEY = "lowbit.plan"
ENCODING = "zlib+base64"


def record_plan(model: onnx.ModelProto, plan: QuantPlan) -> None:
    """Store the plan, compressed and without per-channel weight scales (they are the model's own
    initializers), plus a hash of the full plan: the file says how it was made at ~1% of its size.
    The timings behind latency choices (plan.decisions.layer_costs) stay out: they are one run's
    noise, and two runs that make the same choices must write the same bytes."""
    if plan.decisions.layer_costs is not None:
        plan = dataclasses.replace(plan, decisions=dataclasses.replace(plan.decisions, layer_costs=None))
    full = plan.to_json(include_weight_params=True)
    compact = plan.to_json(include_weight_params=False).encode()
    entries = {
        "lowbit.version": __version__,
        "lowbit.precision": plan.precision,
        PLAN_KEY: base64.b64encode(zlib.compress(compact, 9)).decode("ascii"),
        "lowbit.plan.encoding": ENCODING,
        "lowbit.plan_sha256": hashlib.sha256(full.encode()).hexdigest(),
    }
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in entries.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "lowbit"
    model.producer_version = __version__


def plan_from_model(model: onnx.ModelProto) -> QuantPlan:
    """The plan a lowbit model was made with; weight scales are read back from its initializers. The
    record is checked like any plan (lowbit.plan.schema): a damaged or foreign one is a ModelError."""
    meta = {p.key: p.value for p in model.metadata_props}
    if PLAN_KEY not in meta:
        raise ModelError("this model carries no lowbit plan (it was not written by lowbit).")
    limit = plan_size_limit(model)
    try:
        z = zlib.decompressobj()
        text = z.decompress(base64.b64decode(meta[PLAN_KEY], validate=True), limit + 1)
        if len(text) > limit or z.unconsumed_tail:
            raise ValueError(f"it expands to more than the {limit / 1e6:.0f} MB a plan of this model can take")
        d = json.loads(text)
    except (ValueError, RecursionError, zlib.error) as e:  # binascii.Error and JSONDecodeError are ValueErrors
        raise ModelError(f"this model's lowbit plan record ({PLAN_KEY}) is damaged: {e}. The model itself may "
                         "still load; its plan cannot be read back.") from None
    tensors = d.get("tensors") if isinstance(d, dict) else None
    inits = {t.name: t for t in model.graph.initializer}
    # a weight's scale / zero point are its DequantizeLinear's inputs (named `W_s`, `W_z` unless the
    # model held those names; a 4-bit zero point reaches it through a Cast)
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output}
    cast_of = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast" and n.output and n.input}
    for name, t in (tensors.items() if isinstance(tensors, dict) else ()):
        if not isinstance(t, dict) or "scale" in t:
            continue  # checked by from_dict
        node = dq.get(name)
        s_name = node.input[1] if node is not None and len(node.input) > 1 else f"{name}{SCALE}"
        z_name = node.input[2] if node is not None and len(node.input) > 2 else f"{name}{ZERO_POINT}"
        scale = inits.get(s_name)
        if scale is None:
            raise ModelError(f"the model's plan refers to weight '{name}' whose scale initializer is missing.")
        t["scale"] = onnx.numpy_helper.to_array(scale).tolist()
        zp = inits.get(cast_of.get(z_name, z_name))
        t["zero_point"] = (onnx.numpy_helper.to_array(zp).astype(np.int64).tolist() if zp is not None
                           else _zeros_like(t["scale"]))
    try:
        return QuantPlan.from_dict(d)
    except ConfigError as e:
        raise ModelError(f"this model's lowbit plan record does not pass the plan checks: {e}") from None


def _zeros_like(a):
    return [_zeros_like(x) for x in a] if isinstance(a, list) else 0
