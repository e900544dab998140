"""The algorithm interface and registry."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from typing import ClassVar

import onnx

from lowbit.data import FeedSource
from lowbit.plan import QuantPlan
from lowbit.progress import Progress, null_progress
from lowbit.registry import Registry


@dataclass
class AlgorithmContext:
    """What an algorithm may use besides the model and the plan."""

    calib: FeedSource | None
    config: "object"  # lowbit.config.QuantConfig (not imported: config imports algorithms)
    progress: Progress = null_progress
    seed: int = 0


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
