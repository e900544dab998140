"""The choices lowbit made for one model, each with the measurements behind it, kept apart from
what the user asked for (`QuantPlan.config`). A decision is recorded by the stage that made it
and read by whoever explains or re-checks it (the report, the plan's reader).

In a plan file (format lowbit.plan/1) the decisions are written into its "config" object, after
the configuration's own keys, so files stay as they were; reading a plan splits them out again.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Decisions:
    """What was chosen for this model and why; None where that choice was not made."""

    # elementwise Add / Mul / Concat kept in float where the simulated output is clearly closer to
    # FP32: {"float": chosen, both SQNRs, the margin} (lowbit.plan.regions.choose_elementwise)
    elementwise_choice: dict | None = None
    # the activation clipping level whose plan is closest to FP32 at the output: {"chosen", the
    # output SQNR of every level, the samples} (lowbit.plan.clipping)
    activation_clipping: dict | None = None
    # a mixed model's first layers in float where clearly closer to FP32 (lowbit.search.float_prefix)
    float_prefix: dict | None = None
    # a mixed model's layers kept in float where their measured INT8 error says so (lowbit.search.float_choice)
    float_choice: dict | None = None
    # layers kept in float for speed -> the per-run INT8 / FP32 timings that decided it
    # (lowbit.target.latency_choice); left out of the plan embedded in a model
    layer_costs: dict | None = None
    # KeepIfBetter: per algorithm, kept or not, the output SQNR with and without, the gain's bound
    algorithm_choices: dict | None = None
    # int8-dynamic: 7-bit weights because the target's u8 x s8 kernel saturates (lowbit.target.cpu)
    reduce_range: bool | None = None

    def get(self, name: str, default=None):
        """A decision by its name in plan files (None where not made: `default`)."""
        value = getattr(self, name) if name in self._names() else None
        return default if value is None else value

    def __getitem__(self, name: str):
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    @classmethod
    def _names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def to_dict(self) -> dict:
        """The recorded decisions, in the order the pipeline makes them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def split(cls, config: dict) -> tuple[dict, "Decisions"]:
        """(the configuration, the decisions) of a plan file's "config" object."""
        names = cls._names()
        return ({k: v for k, v in config.items() if k not in names},
                cls(**{k: v for k, v in config.items() if k in names}))
