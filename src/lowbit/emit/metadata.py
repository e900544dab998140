"""Record the plan and lowbit's version in a model's metadata_props."""

from __future__ import annotations

import hashlib

import onnx

from lowbit import __version__
from lowbit.plan import QuantPlan


def record_plan(model: onnx.ModelProto, plan: QuantPlan) -> None:
    """Store the plan (per-channel weight scales left out: they are the model's own initializers)
    and a hash of the full plan, so the file says how it was made without doubling its size."""
    full = plan.to_json(include_weight_params=True)
    entries = {
        "lowbit.version": __version__,
        "lowbit.precision": plan.precision,
        "lowbit.plan": plan.to_json(include_weight_params=False),
        "lowbit.plan_sha256": hashlib.sha256(full.encode()).hexdigest(),
    }
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in entries.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "lowbit"
    model.producer_version = __version__
