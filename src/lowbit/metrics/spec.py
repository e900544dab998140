"""A metric as the user names it: `NAME[:KEY=VALUE,...]` (`detection-yolo:conf=0.25`), options also
given one by one (`--metric-option conf=0.25`), and `output=NAME` (or `output=A+B` for metrics reading
two outputs) to say which model output it scores."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lowbit.errors import ConfigError
from lowbit.metrics.base import METRICS, Metric


@dataclass(frozen=True)
class MetricChoice:
    """One metric the report computes: the metric, the outputs it reads (() = the first ones),
    whether the user gave it or lowbit inferred it, and why."""

    metric: Any                    # a Metric, or callable(reference, candidate, labels) -> float
    name: str
    outputs: tuple[str, ...] = ()
    source: str = "given"          # 'given' | 'inferred' | 'generic'
    reason: str = ""

    @property
    def higher_is_better(self) -> bool:
        return bool(getattr(self.metric, "higher_is_better", True))

    @property
    def definition(self) -> str:
        if isinstance(self.metric, Metric):
            return type(self.metric).definition()
        return "a user-given function of (reference outputs, candidate outputs, labels)"


def _coerce(cls: type, name: str, key: str, text: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if key not in fields:
        known = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"metric '{name}' has no option '{key}'; its options: {known} (and output).")
    kind = str(fields[key].type)
    try:
        if kind == "bool":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"metric '{name}' option {key} takes a {kind}; got '{text}'.") from None
    return text


def parse_metric(spec: Any, options: Sequence[str] = ()) -> MetricChoice:
    """A registry name with options, a Metric, or a callable -> MetricChoice.

    >>> parse_metric("detection-yolo:conf=0.1").metric.conf
    0.1
    """
    if isinstance(spec, MetricChoice):
        return spec
    if isinstance(spec, Metric):
        return MetricChoice(spec, spec.registry_name)
    if callable(spec) and not isinstance(spec, str):
        if options:
            raise ConfigError("metric options apply to a registered metric, not to a Python callable.")
        return MetricChoice(spec, getattr(spec, "__name__", "custom"))
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a metric is a name from `lowbit list metrics`, a Metric or a callable; got {spec!r}.")
    name, _, rest = spec.strip().partition(":")
    items = [p for p in rest.split(",") if p.strip()] + [o for o in options if o.strip()]
    cls = METRICS.get(name)
    kwargs: dict[str, Any] = {}
    outputs: tuple[str, ...] = ()
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"metric option '{item}' is not KEY=VALUE (e.g. {name}:conf=0.25).")
        if key == "output":
            outputs = tuple(o for o in value.split("+") if o)
            continue
        kwargs[key] = _coerce(cls, name, key, value.strip())
    return MetricChoice(METRICS.create(name, **kwargs), name, outputs)


def metric_callable(choice: MetricChoice) -> Callable:
    m = choice.metric
    return m.score if isinstance(m, Metric) else m
