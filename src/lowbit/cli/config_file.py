"""A QuantConfig as a TOML file (`lowbit quantize --config lowbit.toml`), and the CLI's short forms
of its common fields (`--calibration percentile:99.99`, `--algorithms cle,gptq,bias-correction`).

The file mirrors `QuantConfig.to_dict()`: the same keys, tables for the schemes, an array of tables
for the algorithms. `preset = "int8"` starts from a preset (its other keys override it); without it
the file starts from `QuantConfig()`'s defaults, as the Python API does. Two `quantize()` arguments
may be given too: `metric` (the report's headline metric, 'detection-yolo:conf=0.25') and `recover`
(label-free fine-tuning after calibration, lowbit.recover: a budget such as "10m", or a table of
`Recover`'s options).
`lowbit quantize --print-config --preset NAME` writes a preset's whole config in this form:

    preset = "int8"
    precision = "int8"
    target = "auto"

    [activations]
    dtype = "uint8"
    calibration = { name = "percentile", percentile = 99.99, bins = 4096 }

    [[algorithms]]
    name = "cle"

A misspelled key is an error naming the valid ones, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
from pathlib import Path
from typing import Any

from lowbit.algorithms import ALGORITHMS
from lowbit.api import quantize
from lowbit.calibration import CALIBRATIONS
from lowbit.config import QuantConfig
from lowbit.core.dtypes import dtype_by_name
from lowbit.core.granularity import granularity_from_dict
from lowbit.errors import ConfigError, did_you_mean
from lowbit.metrics.spec import parse_metric
from lowbit.presets import preset

# keys of the file beyond QuantConfig's own fields
EXTRA_KEYS = ("preset", "metric", "recover")
_SCHEME_KEYS = ("dtype", "granularity", "symmetric", "calibration")
_GRANULARITY_KINDS = ("per_tensor", "per_channel", "per_group")


def _norm(name: str) -> str:
    """Registry names are spelled with '-' or '_' ('bias_correction', 'keep-if-better'): either works."""
    return name.strip().lower().replace("_", "-")


def _lookup(registry, name: str) -> str:
    """The registered spelling of `name` ('bias-correction' -> 'bias_correction'), or a ConfigError
    naming the valid ones."""
    names = {_norm(n): n for n in registry.names()}
    if _norm(name) not in names:
        raise ConfigError(f"unknown {registry.kind} '{name}'." + did_you_mean(name, registry.names())
                          + " (lowbit list describes each.)")
    return names[_norm(name)]


def _config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(QuantConfig) if f.name != "extras"]


# --- registry entries from dicts or short strings ------------------------------------------------

def _check_options(kind: str, name: str, cls, options: dict) -> dict:
    """`options` checked against the fields of `cls` (names and kinds of value); lists become tuples
    (the configs are frozen and hashable)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in options.items():
        if key not in fields:
            raise ConfigError(f"{kind} '{name}' has no option '{key}'."
                              + (did_you_mean(key, fields) if fields else " It takes none."))
        default = fields[key].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{kind} '{name}' option '{key}' is true or false; got {value!r}.")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float))
                or isinstance(default, int) and not isinstance(value, int) and not float(value).is_integer()):
            raise ConfigError(f"{kind} '{name}' option '{key}' is a number such as {default!r}; got {value!r}.")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
            value = int(value)
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def calibration_from(spec: Any):
    """A calibration method from 'percentile', 'percentile:99.99' (the method's first option),
    'percentile:percentile=99.9,bins=2048', or a dict {'name': 'percentile', 'percentile': 99.9}."""
    if isinstance(spec, str):
        name, options = _parse_short(spec, "calibration method", CALIBRATIONS)
    elif isinstance(spec, dict) and "name" in spec:
        name, options = _lookup(CALIBRATIONS, str(spec["name"])), {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ConfigError(f"a calibration method is a name such as 'percentile:99.99' or a table with 'name'; "
                          f"got {spec!r}.")
    cls = CALIBRATIONS.get(name)
    return CALIBRATIONS.create(name, **_check_options("calibration method", name, cls, options))


def algorithm_from(spec: Any):
    """An algorithm from 'gptq', 'gptq:0.1' (its first option), 'gptq:percdamp=0.1,act_order=true',
    'keep-if-better:gptq' (KeepIfBetter wrapping GPTQ()), or a dict {'name': 'gptq', ...} whose
    nested algorithms (keep-if-better's 'algorithm' and 'then') are dicts too."""
    if isinstance(spec, str):
        name = _lookup(ALGORITHMS, spec.split(":", 1)[0])
        if name == "keep-if-better":
            inner = spec.split(":", 1)[1] if ":" in spec else ""
            if not inner:
                raise ConfigError("keep-if-better wraps a plan-stage algorithm: write keep-if-better:gptq "
                                  "(or keep-if-better:adaround).")
            return ALGORITHMS.create(name, algorithm=algorithm_from(inner))
        name, options = _parse_short(spec, "algorithm", ALGORITHMS)
    elif isinstance(spec, dict) and "name" in spec:
        name, options = _lookup(ALGORITHMS, str(spec["name"])), {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ConfigError(f"an algorithm is a name such as 'gptq' or a table with 'name'; got {spec!r}.")
    cls = ALGORITHMS.get(name)
    options = {k: (algorithm_from(v) if isinstance(v, dict) else
                   tuple(algorithm_from(a) for a in v) if isinstance(v, list) and v and isinstance(v[0], dict) else v)
               for k, v in options.items()}
    return ALGORITHMS.create(name, **_check_options("algorithm", name, cls, options))


def algorithms_from(text: str) -> tuple:
    """--algorithms: comma-separated names in the order they run within their stage ('none': no
    algorithm). Options go in a --config file."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["none"]:
        return ()
    return tuple(algorithm_from(t) for t in items)


def _parse_short(spec: str, kind: str, registry) -> tuple[str, dict]:
    """'name', 'name:VALUE' (the first option) or 'name:key=value,key=value' -> (name, options)."""
    name, _, rest = spec.partition(":")
    name = _lookup(registry, name)
    if not rest:
        return name, {}
    fields = [f.name for f in dataclasses.fields(registry.get(name))]
    if "=" not in rest:
        if not fields:
            raise ConfigError(f"{kind} '{name}' takes no options; got '{spec}'.")
        return name, {fields[0]: _scalar(rest)}
    options = {}
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"{kind} options are key=value pairs ('{name}:{fields[0] if fields else 'key'}=...'); "
                              f"got '{part}' in '{spec}'.")
        options[key.strip()] = _scalar(value.strip())
    return name, options


def _scalar(text: str):
    """'99.99' -> 99.99, '4' -> 4, 'true' -> True; anything else stays text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# --- the file ------------------------------------------------------------------------------------

def config_from_dict(d: dict, base=None, where: str = "config"):
    """A QuantConfig from the file's keys (see the module docstring), on top of `base` (a QuantConfig;
    default QuantConfig()). Returns (config, {'metric': ..., 'recover': ...}): the quantize()
    arguments the file gives (None where it does not)."""
    fields = _config_fields()
    valid = fields + list(EXTRA_KEYS)
    for key in d:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key '{key}'." + did_you_mean(key, valid))
    if "preset" in d:
        if base is not None and base != preset(str(d["preset"])):
            raise ConfigError(f"{where} starts from preset '{d['preset']}' and --preset names another: give one.")
        base = preset(str(d["preset"]))
    config = base if base is not None else QuantConfig()
    changes: dict[str, Any] = {}
    for key, value in d.items():
        if key in EXTRA_KEYS:
            continue
        if key in ("weights", "activations"):
            changes[key] = _scheme(value, getattr(config, key), f"{where}: [{key}]")
        elif key == "algorithms":
            if not isinstance(value, list):
                raise ConfigError(f"{where}: algorithms is a list ([[algorithms]] tables or names); got {value!r}.")
            changes[key] = tuple(algorithm_from(a) for a in value)
        elif key in ("keep_float", "op_types"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {key} is a list of strings; got {value!r}.")
            changes[key] = tuple(value)
        else:
            changes[key] = value
    try:
        config = dataclasses.replace(config, **changes)
    except TypeError as e:  # a field QuantConfig does not take
        raise ConfigError(f"{where}: {e}") from None
    metric = d.get("metric")
    if metric is not None:
        if not isinstance(metric, str):
            raise ConfigError(f"{where}: metric is a name with options such as 'detection-yolo:conf=0.25'; "
                              f"got {metric!r}.")
        parse_metric(metric, [])  # checked now: a bad name fails before any work
    return config, {"metric": metric, "recover": recover_from(d["recover"], where) if "recover" in d else None}


def recover_from(spec: Any, where: str = "recover"):
    """A lowbit.recover.Recover from a budget ("10m", "500steps") or a table of its options."""
    if "recover" not in inspect.signature(quantize).parameters:  # pragma: no cover - builds without recover
        raise ConfigError(f"{where}: 'recover' is not available in this version of lowbit.")
    from lowbit.recover import Recover  # needs torch: lowbit.extras names the extra to install

    if isinstance(spec, str):
        return Recover(spec)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: recover is a budget such as \"10m\" or \"500steps\", or a table of its "
                          f"options ({{ budget = \"10m\", holdout = 0.2 }}); got {spec!r}.")
    return Recover(**_check_options("recover", "Recover", Recover, spec))


def _scheme(d: Any, base, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where} is a table with keys {', '.join(_SCHEME_KEYS)}; got {d!r}.")
    for key in d:
        if key not in _SCHEME_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}'." + did_you_mean(key, _SCHEME_KEYS))
    changes: dict[str, Any] = {}
    if "dtype" in d:
        changes["dtype"] = dtype_by_name(str(d["dtype"]))
    if "granularity" in d:
        g = d["granularity"]
        g = {"kind": g} if isinstance(g, str) else g
        if not isinstance(g, dict) or g.get("kind") not in _GRANULARITY_KINDS:
            raise ConfigError(f"{where}: granularity is {{ kind = ... }} with kind one of "
                              f"{', '.join(_GRANULARITY_KINDS)} (per_channel takes axis, per_group axis and size); "
                              f"got {d['granularity']!r}.")
        try:
            changes["granularity"] = granularity_from_dict(g)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"{where}: granularity {g!r} is missing or has a wrong key ({e}).") from None
    if "symmetric" in d:
        if not isinstance(d["symmetric"], bool):
            raise ConfigError(f"{where}: symmetric is true or false; got {d['symmetric']!r}.")
        changes["symmetric"] = d["symmetric"]
    if "calibration" in d:
        changes["calibration"] = calibration_from(d["calibration"])
    return dataclasses.replace(base, **changes) if changes else base


def load_config(path: str | Path, base=None):
    """(QuantConfig, {'metric': ..., 'recover': ...}) from a TOML file; errors name the file and the
    bad key.

    >>> config, args = load_config("lowbit.toml")   # doctest: +SKIP
    >>> lowbit.quantize("model.onnx", config, "calib/", **args)   # doctest: +SKIP
    """
    import tomllib

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file. `lowbit quantize --print-config --preset int8 -o x` "
                          "writes one to start from.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path} is not UTF-8 text; give a TOML file.") from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path} is not valid TOML: {e}.") from None
    try:
        return config_from_dict(d, base, where=str(path))
    except ConfigError as e:  # every error names the file
        if str(e).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {e}") from None


# --- writing -------------------------------------------------------------------------------------

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else "nan" if math.isnan(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        items = [f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise ConfigError(f"cannot write {v!r} to a config file")


def config_to_toml(config, preset_name: str | None = None, metric: str | None = None, recover=None) -> str:
    """The whole of `config` as TOML that `load_config` reads back into an equal QuantConfig (and the
    quantize() arguments `metric` and `recover` where given)."""
    d = config.to_dict()
    lines = ["# lowbit quantization config: lowbit quantize MODEL --config THIS_FILE --calib DATA -o OUT.onnx",
             "# Keys mirror lowbit.QuantConfig; `lowbit list` names every calibration method and algorithm."]
    if preset_name:
        lines.append(f"preset = {_value(preset_name)}")
    if metric:
        lines.append(f"metric = {_value(metric)}")
    tables = {k: d.pop(k) for k in ("weights", "activations") if k in d}
    algorithms = d.pop("algorithms", [])
    for k, v in d.items():
        if v is not None:
            lines.append(f"{_key(k)} = {_value(v)}")
    if not algorithms:
        lines.append("algorithms = []")
    for name, t in tables.items():
        lines += ["", f"[{name}]"] + [f"{_key(k)} = {_value(v)}" for k, v in t.items() if v is not None]
    for a in algorithms:
        lines += ["", "[[algorithms]]"] + [f"{_key(k)} = {_value(v)}" for k, v in a.items() if v is not None]
    if recover is not None:
        lines += ["", "[recover]"] + [f"{_key(k)} = {_value(v)}" for k, v in dataclasses.asdict(recover).items()
                                      if v is not None]
    return "\n".join(lines) + "\n"
