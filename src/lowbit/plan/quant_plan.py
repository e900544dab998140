"""QuantPlan: the spine. A plain, serializable description of what is quantized and how.

Calibration produces it, algorithms refine it, the emitter consumes it, the report explains it.
It is JSON: a user can read, diff, edit and re-apply it (`lowbit quantize --plan plan.json`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lowbit.core.dtypes import dtype_by_name
from lowbit.core.granularity import PerGroup, PerTensor, granularity_from_dict
from lowbit.core.qparams import QParams
from lowbit.errors import ConfigError
from lowbit.io import atomic_write_text, read_regular_file
from lowbit.plan.decisions import Decisions
from lowbit.plan.schema import PLAN_SCHEMA, check_plan_dict

# A plan file is read whole into memory: refuse anything larger before reading it. The full plan of
# MobileNetV2 is ~0.4 MB; lowbit.quantize passes a limit relative to the model (plan_fit).
MAX_PLAN_BYTES = 256 << 20


@dataclass
class TensorPlan:
    """How one tensor is quantized. `role`: 'weight', 'bias' or 'activation'."""

    name: str
    role: str
    qparams: QParams
    calibrated_range: tuple[float, float] | None = None
    method: str | None = None

    def to_dict(self, include_params: bool = True) -> dict:
        q = self.qparams
        g = q.granularity
        d = {
            "role": self.role,
            "dtype": q.dtype.name,
            "granularity": {"kind": g.kind, **({"axis": g.axis} if hasattr(g, "axis") else {}),
                            **({"size": g.size} if isinstance(g, PerGroup) else {})},
            "narrow": q.narrow,
        }
        if include_params or isinstance(g, PerTensor):
            d["scale"] = _to_json_array(q.scale)
            d["zero_point"] = _to_json_array(q.zero_point)
        if self.calibrated_range is not None:
            d["range"] = [float(self.calibrated_range[0]), float(self.calibrated_range[1])]
        if self.method:
            d["method"] = self.method
        return d

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "TensorPlan":
        if "scale" not in d:
            raise ConfigError(f"plan entry for tensor '{name}' has no scale (the plan was stored without "
                              "weight parameters; load it with QuantPlan.from_model instead)")
        q = QParams(dtype_by_name(d["dtype"]), granularity_from_dict(d["granularity"]),
                    np.asarray(d["scale"], dtype=np.float32), np.asarray(d["zero_point"], dtype=np.int64),
                    bool(d.get("narrow", False)))
        rng = tuple(d["range"]) if d.get("range") is not None else None
        return cls(name, d["role"], q, rng, d.get("method"))


def _to_json_array(a: np.ndarray):
    a = np.asarray(a)
    return a.tolist() if a.ndim else a.item()


@dataclass
class NodePlan:
    """The precision one graph node runs in, and why."""

    name: str
    op: str
    precision: str  # 'int8', 'fp16', 'fp32', 'int8-dynamic', 'folded'
    reason: str = ""

    def to_dict(self) -> dict:
        return {"op": self.op, "precision": self.precision, "reason": self.reason}


@dataclass
class QuantPlan:
    """What is quantized and how, for one prepared model."""

    precision: str
    nodes: dict[str, NodePlan] = field(default_factory=dict)
    tensors: dict[str, TensorPlan] = field(default_factory=dict)
    # Ranges of float tensors that are observed but not quantized (graph outputs): the parity
    # check measures ONNX Runtime against the simulation in steps of these ranges' 8-bit grid.
    observed: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Relu/Clip nodes removed because the quantized output range already clips: node -> producer.
    folded: dict[str, str] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    model_fingerprint: str = ""
    lowbit_version: str = ""
    # what lowbit chose for this model and why (not the user's config; written into "config" in files)
    decisions: Decisions = field(default_factory=Decisions)

    # --- queries -----------------------------------------------------------------------------
    def quantized_nodes(self) -> list[NodePlan]:
        return [n for n in self.nodes.values() if n.precision not in ("fp32", "folded")]

    def float_nodes(self) -> list[NodePlan]:
        return [n for n in self.nodes.values() if n.precision == "fp32"]

    def activation(self, name: str) -> TensorPlan | None:
        t = self.tensors.get(name)
        return t if t is not None and t.role == "activation" else None

    # --- serialization -----------------------------------------------------------------------
    def to_dict(self, include_weight_params: bool = True) -> dict:
        return {
            "schema": PLAN_SCHEMA,
            "lowbit_version": self.lowbit_version,
            "precision": self.precision,
            "model_fingerprint": self.model_fingerprint,
            "config": {**self.config, **self.decisions.to_dict()},
            "nodes": {k: v.to_dict() for k, v in self.nodes.items()},
            "tensors": {k: v.to_dict(include_weight_params or v.role == "activation")
                        for k, v in self.tensors.items()},
            "observed": {k: [float(a), float(b)] for k, (a, b) in self.observed.items()},
            "folded": dict(self.folded),
        }

    def to_json(self, include_weight_params: bool = True) -> str:
        return json.dumps(self.to_dict(include_weight_params), indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantPlan":
        """The plan of a dict as `to_dict` writes it, checked field by field first (lowbit.plan.schema):
        a ConfigError names the first bad field by its JSON path."""
        check_plan_dict(d)
        config, decisions = Decisions.split(d.get("config", {}))
        return cls(
            precision=d["precision"],
            nodes={k: NodePlan(k, v["op"], v["precision"], v.get("reason", "")) for k, v in d["nodes"].items()},
            tensors={k: TensorPlan.from_dict(k, v) for k, v in d["tensors"].items()},
            observed={k: (float(v[0]), float(v[1])) for k, v in d.get("observed", {}).items()},
            folded=dict(d.get("folded", {})),
            config=config,
            model_fingerprint=d.get("model_fingerprint", ""),
            lowbit_version=d.get("lowbit_version", ""),
            decisions=decisions,
        )

    def check(self) -> "QuantPlan":
        """Raise ConfigError if this plan (built or edited in Python) breaks the plan schema."""
        try:
            d = self.to_dict()
        except Exception as e:  # a field of the wrong type fails inside numpy or the dataclasses
            raise ConfigError(f"invalid plan: it cannot be serialized ({type(e).__name__}: {e}); build its "
                              "nodes as NodePlan and its tensors as TensorPlan with QParams.") from None
        check_plan_dict(d)
        for key, entries in (("nodes", self.nodes), ("tensors", self.tensors)):
            for k, v in entries.items():
                if v.name != k:  # the emitters name new tensors after .name and look plans up by key
                    raise ConfigError(f"invalid plan: plan.{key}[{json.dumps(k)}] holds an entry named "
                                      f"{v.name!r}; each entry's name must be its key.")
        return self

    @classmethod
    def from_json(cls, text: str | bytes) -> "QuantPlan":
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
            detail = str(e) if isinstance(e, json.JSONDecodeError) else "it is not UTF-8 JSON text" \
                if isinstance(e, UnicodeDecodeError) else f"{type(e).__name__}: {e}"
            raise ConfigError(f"plan is not valid JSON: {detail}. Give a plan saved by lowbit "
                              "(--save-plan / QuantPlan.save).") from None
        return cls.from_dict(d)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON, atomically."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, max_bytes: int = MAX_PLAN_BYTES) -> "QuantPlan":
        """The plan saved at `path`, checked (see from_dict). Files over `max_bytes` are refused unread."""
        p = Path(path)
        try:
            size = os.stat(p).st_size
        except OSError:
            size = 0  # read_regular_file names what is wrong with the path
        if size > max_bytes:
            raise ConfigError(f"plan file {p} is {size / 1e6:,.1f} MB, over the {max_bytes / 1e6:,.1f} MB a plan "
                              "can take here (the full plan of MobileNetV2 is 0.4 MB): it is not a lowbit plan "
                              "for this model.")
        return cls.from_json(read_regular_file(p, "plan file", ConfigError, max_bytes))
