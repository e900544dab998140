"""The plan's schema. A plan is JSON a user can edit and hand back (`--plan plan.json`), so it is
checked like any user input before anything uses it: types, ranges, finiteness, and only what the
emitters really support. The first bad field is named by its JSON path, e.g.
`plan.tensors["x"].scale[3] is nan: scales must be finite and positive`.

`check_plan_dict` checks a plan on its own; `check_plan_fits` (lowbit.plan.fit) checks it against
the model it is applied to.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from lowbit.config import Scheme
from lowbit.core.dtypes import QDtype, dtype_by_name
from lowbit.errors import ConfigError, LowbitError, did_you_mean
from lowbit.plan.algorithm import algorithm_from_dict
from lowbit.target.cpu import TARGETS
from lowbit.target.latency_choice import check_plan_timings

PLAN_SCHEMA = "lowbit.plan/1"

# Node precisions each plan precision's emitter handles (plan.py's NodePlan; emit/qdq.py, emit/int4.py,
# emit/fp16.py, emit/dynamic.py, transformers/pipeline.py write them).
NODE_PRECISIONS: dict[str, tuple[str, ...]] = {
    "int8": ("int8", "int8-block", "int4", "w8", "fp16", "fp32", "folded"),
    "int8-dynamic": ("int8-dynamic", "w8", "fp32"),
    "fp16": ("fp16", "fp32"),
    "int4": ("int4", "int8", "fp32"),
}
ROLES = ("weight", "bias", "activation")
GRANULARITIES = ("per_tensor", "per_channel", "per_group")

# Scale bounds. QuantizeLinear computes x / scale in float32: with scale >= 1e-30 every |x| <= 1e8
# stays finite before it saturates (below ~1.2e-38 float32 is subnormal and 1e-45 rounds to 0, so
# every output would be 0 or inf). lowbit's own smallest scales are 1e-12 (core.qparams.MIN_SCALE)
# and their products (~1e-24, int32 biases). DequantizeLinear computes (q - zp) * scale: an int32
# bias reaches |q - zp| < 2**32 ~ 4.3e9, and 4.3e9 * 1e28 = 4.3e37 stays below float32's 3.4e38.
MIN_SCALE, MAX_SCALE = 1e-30, 1e28

TOP_KEYS = ("schema", "lowbit_version", "precision", "model_fingerprint", "config", "nodes", "tensors",
            "observed", "folded")
TENSOR_KEYS = ("role", "dtype", "granularity", "narrow", "scale", "zero_point", "range", "method")
NODE_KEYS = ("op", "precision", "reason")
# QuantConfig.to_dict's keys, plus what stages record in plan.config (clipping level, KeepIfBetter's
# decision, the int4 recipe, dynamic INT8's and FP16's storage choices, the timings behind latency
# choices, what recovery did).
CONFIG_KEYS = ("precision", "weights", "activations", "keep_float", "algorithms", "op_types", "keep_io_types",
               "target", "objective", "transformer", "seed", "activation_clipping", "algorithm_choices",
               "int8_layers", "reduce_range", "group_size", "rounding", "storage", "per_channel", "layer_costs",
               "elementwise_choice", "float_prefix", "float_choice", "recover")
MAX_TEXT = 4096            # a reason, method or op name longer than this is not lowbit's
MAX_CONFIG_BYTES = 1 << 20  # plan.config is a few KB; it is copied into the model's metadata


def path_of(*parts: str | int) -> str:
    """`plan.tensors["x"].scale[3]` from ("tensors", "x", "scale", 3): names quoted, indices bare."""
    out = "plan"
    for i, p in enumerate(parts):
        if isinstance(p, int):
            out += f"[{p}]"
        elif i == 1 and parts[0] in ("nodes", "tensors", "observed", "folded"):
            out += f"[{json.dumps(p)}]"  # a node or tensor name: any characters
        else:
            out += f".{p}"
    return out


def _show(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # nan, inf, -inf (json would write NaN / Infinity)
    if isinstance(v, (list, dict)):
        kind = "a list" if isinstance(v, list) else "an object"
        return f"{kind} with {len(v):,} entr{'y' if len(v) == 1 else 'ies'}"
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def fail(path: str, value: Any, rule: str) -> ConfigError:
    return ConfigError(f"invalid plan: {path} is {_show(value)}: {rule}. Fix that field, or make the plan again "
                       "(lowbit quantize --save-plan).")


def missing(path: str, rule: str) -> ConfigError:
    return ConfigError(f"invalid plan: {path} is missing: {rule}.")


def _obj(path: str, v: Any, what: str) -> dict:
    if not isinstance(v, dict):
        raise fail(path, v, f"{what} must be a JSON object")
    return v


def _keys(path_parts: tuple, d: dict, known: tuple[str, ...], what: str) -> None:
    for k in d:
        if k not in known:
            raise ConfigError(f"invalid plan: {path_of(*path_parts, k)} is not a field of {what}."
                              + did_you_mean(str(k), known))


def _text(path: str, v: Any, what: str, optional: bool = False, limit: int = MAX_TEXT) -> None:
    if optional and v is None:
        return
    if not isinstance(v, str):
        raise fail(path, v, f"{what} must be a string")
    if len(v) > limit:
        raise fail(path, v, f"{what} must be at most {limit} characters")


def _number(v: Any) -> bool:
    return type(v) in (int, float)


def _int(v: Any) -> bool:
    return type(v) is int


def check_plan_dict(d: Any) -> None:
    """Raise ConfigError naming the first field of `d` (a plan's JSON, as QuantPlan.to_dict writes it)
    that is not valid: wrong type, out of range, not finite, or something the emitters do not support."""
    if not isinstance(d, dict):
        kind = "null" if d is None else type(d).__name__
        raise ConfigError(f"invalid plan: the plan must be a JSON object with schema '{PLAN_SCHEMA}'; this one is "
                          f"{kind}. Give a plan saved by lowbit (--save-plan / QuantPlan.save).")
    if d.get("schema") != PLAN_SCHEMA:
        raise ConfigError(f"not a lowbit plan: schema is {_show(d.get('schema'))}, expected '{PLAN_SCHEMA}'.")
    _keys((), d, TOP_KEYS, "a lowbit plan")
    precision = d.get("precision")
    if precision not in NODE_PRECISIONS:
        raise fail(path_of("precision"), precision, "a plan's precision is one of " + ", ".join(NODE_PRECISIONS))
    _text(path_of("lowbit_version"), d.get("lowbit_version", ""), "the version", limit=64)
    _text(path_of("model_fingerprint"), d.get("model_fingerprint", ""), "the model fingerprint", limit=128)
    for key in ("nodes", "tensors"):
        if key not in d:
            raise missing(path_of(key), f"a plan lists its {key} (an object, possibly empty)")
    nodes = _obj(path_of("nodes"), d["nodes"], "nodes")
    folded = _obj(path_of("folded"), d.get("folded", {}), "folded")
    for name, n in nodes.items():
        _node(name, n, precision, folded)
    for name, t in _obj(path_of("tensors"), d["tensors"], "tensors").items():
        check_tensor_dict(name, t)
    for name, r in _obj(path_of("observed"), d.get("observed", {}), "observed").items():
        _range(path_of("observed", name), r)
    for name, producer in folded.items():
        _text(path_of("folded", name), producer, "the name of the node a Relu/Clip was folded into")
    _config(_obj(path_of("config"), d.get("config", {}), "config"), precision)


def _node(name: str, n: Any, precision: str, folded: dict) -> None:
    _obj(path_of("nodes", name), n, "a node entry")
    _keys(("nodes", name), n, NODE_KEYS, "a node entry")
    if "op" not in n:
        raise missing(path_of("nodes", name, "op"), "each node names its ONNX op type")
    _text(path_of("nodes", name, "op"), n["op"], "the op type", limit=256)
    p = n.get("precision")
    allowed = NODE_PRECISIONS[precision]
    if p not in allowed:
        raise fail(path_of("nodes", name, "precision"), p,
                   f"in {'an' if precision[0] == 'i' else 'a'} '{precision}' plan a node's precision is one of {', '.join(allowed)}")
    if p == "folded" and name not in folded:
        raise fail(path_of("nodes", name, "precision"), p, "a folded node must also be listed in plan.folded "
                   "with the node it was folded into")
    _text(path_of("nodes", name, "reason"), n.get("reason", ""), "the reason")


def _range(path: str, r: Any) -> None:
    if not (isinstance(r, list) and len(r) == 2 and all(_number(v) for v in r)):
        raise fail(path, r, "a range is a list of two numbers [low, high]")
    if not all(math.isfinite(v) for v in r) or r[0] > r[1]:
        raise fail(path, r, "a range's two numbers must be finite, low <= high")


def _dtype_rule(role: str, dt: QDtype, kind: str) -> str | None:
    """Why the emitter cannot use `dt` for `role` at granularity `kind`, or None if it can."""
    if role == "activation" and dt.name not in ("uint8", "int8"):
        return "activations are quantized to uint8 or int8 (ONNX Runtime's QuantizeLinear at opset 13)"
    if role == "bias" and dt.name != "int32":
        return "biases are int32, on the accumulator's grid"
    if role == "weight" and not 2 <= dt.bits <= 8:
        return "weights are 2 to 8 bits wide (int2..int8, uint2..uint8)"
    if kind == "per_group" and dt.name not in ("int4", "int8"):
        return "block-wise (per_group) weights are int4 or int8 (MatMulNBits / GatherBlockQuantized)"
    return None


def check_tensor_dict(name: str, t: Any) -> None:
    """One entry of plan.tensors."""
    p = ("tensors", name)
    _obj(path_of(*p), t, "a tensor entry")
    _keys(p, t, TENSOR_KEYS, "a tensor entry")
    role = t.get("role")
    if role not in ROLES:
        raise fail(path_of(*p, "role"), role, "a tensor's role is weight, bias or activation")
    try:
        dt = dtype_by_name(t.get("dtype")) if isinstance(t.get("dtype"), str) else None
    except ValueError:
        dt = None
    if dt is None:
        raise fail(path_of(*p, "dtype"), t.get("dtype"), "a dtype is an integer grid name such as int8 or uint8")
    g = _obj(path_of(*p, "granularity"), t.get("granularity"), "granularity")
    kind = g.get("kind")
    if kind not in GRANULARITIES:
        raise fail(path_of(*p, "granularity", "kind"), kind, "granularity is per_tensor, per_channel or per_group")
    _keys((*p, "granularity"), g, {"per_tensor": ("kind",), "per_channel": ("kind", "axis"),
                                   "per_group": ("kind", "axis", "size")}[kind], f"a {kind} granularity")
    for k in ("axis", "size")[: {"per_tensor": 0, "per_channel": 1, "per_group": 2}[kind]]:
        if not _int(g.get(k)):
            raise fail(path_of(*p, "granularity", k), g.get(k), f"a {kind} granularity has an integer {k}")
    if kind != "per_tensor" and not -8 <= g["axis"] < 8:
        raise fail(path_of(*p, "granularity", "axis"), g["axis"], "an axis is between -8 and 7")
    if kind == "per_group" and (g["size"] < 16 or g["size"] & (g["size"] - 1)):
        raise fail(path_of(*p, "granularity", "size"), g["size"],
                   "a group size is a power of two >= 16 (the block-wise kernels' rule)")
    allowed_kinds = {"activation": ("per_tensor",), "bias": ("per_tensor", "per_channel"), "weight": GRANULARITIES}[role]
    if kind not in allowed_kinds:
        raise fail(path_of(*p, "granularity", "kind"), kind,
                   f"a{'n' if role == 'activation' else ''} {role} is quantized {' or '.join(allowed_kinds)}")
    rule = _dtype_rule(role, dt, kind)
    if rule:
        raise fail(path_of(*p, "dtype"), t["dtype"], rule)
    narrow = t.get("narrow", False)
    if not isinstance(narrow, bool):
        raise fail(path_of(*p, "narrow"), narrow, "narrow is true or false")
    if "scale" not in t:
        raise ConfigError(f"plan entry for tensor '{name}' has no scale (the plan was stored without "
                          "weight parameters; load it with QuantPlan.from_model instead)")
    if "zero_point" not in t:
        raise missing(path_of(*p, "zero_point"), "every quantized tensor has a zero point")
    shape = _check_scales(p, t["scale"], kind)
    lo, hi = dt.bounds(narrow)
    if role == "bias" or kind == "per_group":
        lo = hi = 0  # the emitters leave these zero points out of the graph (DequantizeLinear then takes 0)
    zshape = _check_zero_points(p, t["zero_point"], kind, lo, hi, dt, role)
    if zshape != shape:
        raise fail(path_of(*p, "zero_point"), t["zero_point"],
                   f"zero_point must have the same shape as scale ({_shape_text(shape)})")
    if t.get("range") is not None:
        _range(path_of(*p, "range"), t["range"])
    _text(path_of(*p, "method"), t.get("method"), "the method", optional=True, limit=256)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "one number" if shape == () else "x".join(map(str, shape)) + " numbers"


def _flatten(path_parts: tuple, v: Any, kind: str, what: str) -> tuple[list, tuple[int, ...]]:
    """(leaves, shape) of a number (per_tensor) or a rectangular nested list (per_channel: 1-D)."""
    if kind == "per_tensor":
        if isinstance(v, list):
            raise fail(path_of(*path_parts), v, f"a per_tensor {what} is one number, not a list")
        return [v], ()
    if not isinstance(v, list) or not v:
        raise fail(path_of(*path_parts), v, f"a {kind} {what} is a non-empty list of numbers")
    shape: list[int] = []
    x = v
    while isinstance(x, list) and x:
        shape.append(len(x))
        x = x[0]
    if kind == "per_channel" and len(shape) != 1:
        raise fail(path_of(*path_parts), v, f"a per_channel {what} is a flat list of numbers, one per channel")
    leaves: list = []

    def walk(x: Any, depth: int, idx: tuple[int, ...]) -> None:
        if depth == len(shape):
            leaves.append(x)
            return
        if not isinstance(x, list) or len(x) != shape[depth]:
            raise fail(path_of(*path_parts, *idx), x, f"the {what} must be a rectangular array of shape "
                       f"{_shape_text(tuple(shape))}")
        if depth == len(shape) - 1:
            leaves.extend(x)
        else:
            for i, y in enumerate(x):
                walk(y, depth + 1, idx + (i,))

    walk(v, 0, ())
    return leaves, tuple(shape)


def _index(k: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(k, shape)) if shape else ()


def _check_scales(p: tuple, v: Any, kind: str) -> tuple[int, ...]:
    leaves, shape = _flatten((*p, "scale"), v, kind, "scale")
    types = set(map(type, leaves))
    if not types <= {int, float}:
        k = next(i for i, x in enumerate(leaves) if not _number(x))
        raise fail(path_of(*p, "scale", *_index(k, shape)), leaves[k], "scales are numbers")
    try:
        a = np.asarray(leaves, dtype=np.float64)
    except OverflowError:  # an integer too large for a float
        k = next(i for i, x in enumerate(leaves) if isinstance(x, int) and abs(x) > MAX_SCALE)
        raise fail(path_of(*p, "scale", *_index(k, shape)), leaves[k], f"scales must be at most {MAX_SCALE:g}") from None
    bad = ~np.isfinite(a) | (a <= 0)
    if bad.any():
        k = int(np.argmax(bad))
        raise fail(path_of(*p, "scale", *_index(k, shape)), leaves[k], "scales must be finite and positive")
    bad = (a < MIN_SCALE) | (a > MAX_SCALE)
    if bad.any():
        k = int(np.argmax(bad))
        raise fail(path_of(*p, "scale", *_index(k, shape)), leaves[k],
                   f"scales must be between {MIN_SCALE:g} and {MAX_SCALE:g} (smaller ones divide ordinary values "
                   "to infinity in float32, larger ones overflow float32 when dequantized)")
    return shape


def _check_zero_points(p: tuple, v: Any, kind: str, lo: int, hi: int, dt: QDtype, role: str) -> tuple[int, ...]:
    leaves, shape = _flatten((*p, "zero_point"), v, kind, "zero_point")
    if not set(map(type, leaves)) <= {int}:
        k = next(i for i, x in enumerate(leaves) if not _int(x))
        raise fail(path_of(*p, "zero_point", *_index(k, shape)), leaves[k], "zero points are integers")
    if leaves and (min(leaves) < lo or max(leaves) > hi):
        k = next(i for i, x in enumerate(leaves) if not lo <= x <= hi)
        rule = ("a bias's zero point is 0" if role == "bias" else "block-wise weights are symmetric: zero point 0"
                if lo == hi == 0 else f"{'an' if dt.name[0] == 'i' else 'a'} {dt.name} zero point is between {lo} and {hi}")
        raise fail(path_of(*p, "zero_point", *_index(k, shape)), leaves[k], rule)
    return shape


def _config(c: dict, precision: str) -> None:
    """plan.config: what the plan was made with. Only known keys, each of its type; the schemes and
    algorithms are built (and so validated) by their own from_dict."""
    _keys(("config",), c, CONFIG_KEYS, "a plan's config")
    try:
        size = len(json.dumps(c))
    except (TypeError, ValueError):
        size = 0
    if size > MAX_CONFIG_BYTES:
        raise fail(path_of("config"), c, f"a plan's config is a few KB (at most {MAX_CONFIG_BYTES >> 20} MiB); "
                   "it is copied into the quantized model's metadata")
    if "precision" in c and c["precision"] != precision:
        raise fail(path_of("config", "precision"), c["precision"], f"it must match the plan's precision '{precision}'")

    def strings(key: str, nullable: bool = False) -> None:
        v = c[key]
        if nullable and v is None:
            return
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise fail(path_of("config", key), v, "a list of strings" + (" or null" if nullable else ""))

    def _bool(key: str) -> None:
        _of(key, lambda v: isinstance(v, bool), "true or false")

    def _of(key: str, ok, what: str) -> None:
        if not ok(c[key]):
            raise fail(path_of("config", key), c[key], f"config.{key} is {what}")

    def _target() -> None:
        if c["target"] not in TARGETS:
            raise fail(path_of("config", "target"), c["target"], "a target is one of " + ", ".join(TARGETS))

    def _timings() -> None:
        why = check_plan_timings(c["layer_costs"])
        if why:
            raise fail(path_of("config", "layer_costs"), c["layer_costs"], f"config.layer_costs {why}")

    def _built(key: str, what: str) -> None:
        v = _obj(path_of("config", key), c[key], f"a {what}")
        try:
            Scheme.from_dict(v)
        except (LowbitError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise fail(path_of("config", key), v, f"not a valid {what} ({_reason(e)})") from None

    def _algorithms() -> None:
        if not isinstance(c["algorithms"], list):
            raise fail(path_of("config", "algorithms"), c["algorithms"], "a list of algorithm records")
        for i, a in enumerate(c["algorithms"]):
            try:
                algorithm_from_dict(_obj(path_of("config", "algorithms", i), a, "an algorithm record"))
            except ConfigError as e:
                if str(e).startswith("invalid plan:"):
                    raise
                raise fail(path_of("config", "algorithms", i), a, f"not a valid algorithm ({_reason(e)})") from None
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise fail(path_of("config", "algorithms", i), a, f"not a valid algorithm ({_reason(e)})") from None

    checks = {
        "keep_float": lambda: strings("keep_float"),
        "op_types": lambda: strings("op_types", nullable=True),
        "int8_layers": lambda: strings("int8_layers"),
        "keep_io_types": lambda: _bool("keep_io_types"),
        "reduce_range": lambda: _bool("reduce_range"),
        "per_channel": lambda: _bool("per_channel"),
        "seed": lambda: _of("seed", _int, "an integer"),
        "group_size": lambda: _of("group_size", lambda v: _int(v) and v >= 2, "an integer >= 2"),
        "rounding": lambda: _of("rounding", lambda v: v in ("rtn", "gptq"), "'rtn' or 'gptq'"),
        "storage": lambda: _of("storage", lambda v: isinstance(v, str) and len(v) < 64, "a short string"),
        "objective": lambda: _of("objective", lambda v: v in ("latency", "size"), "'latency' or 'size'"),
        "transformer": lambda: _of("transformer", lambda v: isinstance(v, (bool, dict)) or v in ("auto", "mixed"),
                                   "true, false, 'auto', 'mixed' or the transformer recipe's record"),
        "activation_clipping": lambda: _of("activation_clipping", lambda v: isinstance(v, dict), "an object"),
        "algorithm_choices": lambda: _of("algorithm_choices", lambda v: isinstance(v, dict), "an object"),
        "elementwise_choice": lambda: _of("elementwise_choice", lambda v: isinstance(v, dict), "an object"),
        "float_prefix": lambda: _of("float_prefix", lambda v: isinstance(v, dict), "an object"),
        "float_choice": lambda: _of("float_choice", lambda v: isinstance(v, dict), "an object"),
        "recover": lambda: _of("recover", lambda v: isinstance(v, dict), "an object"),
        "target": _target,
        "layer_costs": _timings,
        "weights": lambda: _built("weights", "scheme"),
        "activations": lambda: _built("activations", "scheme"),
        "algorithms": _algorithms,
    }
    for key in c:
        if key in checks:
            checks[key]()


def _reason(e: Exception) -> str:
    return f"missing {e}" if isinstance(e, KeyError) else str(e).rstrip(".")
