"""How many scales a tensor gets: one, one per channel, or one per group of a channel."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PerTensor:
    """One scale and zero point for the whole tensor."""

    kind: str = "per_tensor"


@dataclass(frozen=True)
class PerChannel:
    """One scale per slice along `axis` (axis 0 = output channels of Conv weights)."""

    axis: int = 0
    kind: str = "per_channel"


@dataclass(frozen=True)
class PerGroup:
    """One scale per block of `size` consecutive elements along `axis` (blocked INT4 weights)."""

    axis: int = 0
    size: int = 128
    kind: str = "per_group"


Granularity = PerTensor | PerChannel | PerGroup


def granularity_from_dict(d: dict) -> Granularity:
    kind = d.get("kind")
    if kind == "per_tensor":
        return PerTensor()
    if kind == "per_channel":
        return PerChannel(axis=int(d["axis"]))
    if kind == "per_group":
        return PerGroup(axis=int(d["axis"]), size=int(d["size"]))
    raise ValueError(f"unknown granularity kind {kind!r}; expected per_tensor, per_channel or per_group")
