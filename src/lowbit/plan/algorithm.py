"""The algorithm interface and registry (the algorithms themselves: lowbit.algorithms).

It sits beside the plan, below the algorithms, so that a config (which names algorithms) and the
plan schema (which checks their records) can use the registry without importing them."""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar

import onnx

from lowbit.progress import Progress, null_progress
from lowbit.registry import Registry

if TYPE_CHECKING:  # types only: the plan's schema checks algorithm records through this registry
    from lowbit.config import QuantConfig
    from lowbit.data import FeedSource
    from lowbit.plan.quant_plan import QuantPlan


@dataclass
class AlgorithmContext:
    """What an algorithm may use besides the model and the plan."""

    calib: FeedSource | None
    config: QuantConfig
    progress: Progress = null_progress
    seed: int = 0
    # seconds per step, for the report ('plan:<step>'); never part of the plan (it must not vary)
    timings: dict = field(default_factory=dict)

    def timed(self, step: str, t0: float) -> float:
        """Add the seconds since `t0` to `step`; returns now (the next step's t0)."""
        now = time.perf_counter()
        self.timings[step] = self.timings.get(step, 0.0) + now - t0
        return now


@dataclass(frozen=True)
class Algorithm(abc.ABC):
    """A model/plan transform.

    `stage` says when it runs: 'float' algorithms run on the float model before calibration
    (data-free: batch-norm folding, equalization) and get plan=None; 'plan' algorithms run after
    the plan exists (bias correction, learned rounding) and may refine it.
    """

    stage: ClassVar[str] = "plan"
    registry_name: ClassVar[str] = "?"

    @abc.abstractmethod
    def apply(self, model: onnx.ModelProto, plan: QuantPlan | None,
              ctx: AlgorithmContext) -> tuple[onnx.ModelProto, QuantPlan | None]: ...

    def to_dict(self) -> dict:
        return {"name": self.registry_name, **asdict(self)}


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")
register_algorithm = ALGORITHMS.register


def algorithm_from_dict(d: dict) -> Algorithm:
    d = dict(d)
    return ALGORITHMS.create(d.pop("name"), **d)
