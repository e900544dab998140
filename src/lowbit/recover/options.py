"""`Recover`: the options of label-free recovery (distillation from the FP32 model after PTQ).

The one knob that matters is the budget: `Recover("10m")` (wall time) or `Recover("500steps")`;
the rest have defaults meant for any model (learning rates are relative to each tensor's own scale,
so they do not depend on the model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lowbit.errors import ConfigError

_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|steps?)\s*$", re.IGNORECASE)
_SECONDS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
DEFAULT_BUDGET = "10m"


def parse_budget(text: str) -> tuple[float | None, int | None]:
    """'10m' -> (600.0, None); '500steps' -> (None, 500). Units: s, m, h, steps."""
    m = _BUDGET.match(str(text))
    if not m:
        raise ConfigError(f"a recovery budget is a time or a number of steps, e.g. '10m', '90s', '1h' or "
                          f"'500steps'; got '{text}'.")
    value, unit = float(m.group(1)), m.group(2).lower()
    if value <= 0:
        raise ConfigError(f"the recovery budget must be positive; got '{text}'.")
    if unit.startswith("step"):
        if value != int(value):
            raise ConfigError(f"a step budget is a whole number of steps; got '{text}'.")
        return None, int(value)
    return value * _SECONDS[unit], None


@dataclass(frozen=True)
class Recover:
    """Fine-tune the quantized plan to match the FP32 model's outputs on the (unlabelled) calibration data.

    `budget`: '10m' / '90s' (wall time) or '500steps'. `holdout`: fraction of the calibration samples
    kept out of training to pick the best step and stop early (at least 16 samples). `batch_size`:
    samples per step (global, over all processes). `augment`: random resized crops and flips of image
    inputs ((N, 1 or 3, H, W)); off by default: on MobileNetV2 (crops of 4 photos) 200-step runs with
    and without them landed alike (top-1 agreement 0.917-0.940 on 300 crops of other photos), and
    a 30-step run with them raised the KL on those crops 18% above PTQ's (without: within 5%).
    `jitter`: colour jitter strength on the augmented views (0.2 = brightness, contrast and
    saturation +-20%; needs `augment`); 0 by default: with it the views had ~9x PTQ's loss and
    training on them raised the held-out loss 7x in 10 steps. `lr`: step of Adam relative to each
    tensor's RMS (weights, biases, step sizes). `patience`: evaluations without a held-out improvement before
    stopping. `eval_every`: steps between held-out evaluations. `qdrop`: probability of keeping an
    activation element in float during training (QDrop, Wei et al. 2022); 0 turns it off. `features`:
    intermediate tensors (inputs of quantized layers, evenly spaced through the graph) whose FP32
    values the student also matches, each by its relative squared error (feature distillation, the
    joint form of BRECQ's block reconstruction); `feature_weight`: their share of the loss against
    the outputs'. The held-out score that picks the shipped state reads the outputs only.

    >>> lowbit.quantize("mbv2.onnx", "int8", calib, recover=Recover("10m"))   # doctest: +SKIP
    """

    budget: str = DEFAULT_BUDGET
    holdout: float = 0.2
    batch_size: int = 8
    augment: bool = False
    jitter: float = 0.0
    lr: float = 1e-4  # 1e-3 overshot on MobileNetV2 and MiniLM (held-out loss up after 10 steps)
    patience: int = 6
    eval_every: int = 10
    qdrop: float = 0.0
    # MobileNetV2 int8, 256 crops, 200 steps: 8 watched tensors took top-1 agreement on 300 held-out
    # crops from 0.903 (outputs only) to 0.927 and KL to FP32 down 18%; 16 stopped early at 0.900
    features: int = 8
    feature_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        parse_budget(self.budget)
        if not 0.0 < self.holdout < 0.9:
            raise ConfigError(f"holdout is the fraction of calibration samples kept for early stopping, in (0, 0.9); "
                              f"got {self.holdout}.")
        for name in ("batch_size", "patience", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive int; got {v!r}.")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive (relative to each tensor's RMS, e.g. 1e-3); got {self.lr}.")
        if isinstance(self.features, bool) or not isinstance(self.features, int) or self.features < 0:
            raise ConfigError(f"features is how many intermediate tensors to distil (0: outputs only); got "
                              f"{self.features!r}.")
        if not self.feature_weight >= 0:
            raise ConfigError(f"feature_weight must be >= 0; got {self.feature_weight}.")
        if not 0.0 <= self.jitter < 1.0:
            raise ConfigError(f"jitter is the colour jitter strength in [0, 1) (0.2: +-20%); got {self.jitter}.")
        if self.jitter and not self.augment:
            raise ConfigError("jitter colours the augmented views; give augment=True with it (or drop jitter).")
        if not 0.0 <= self.qdrop < 1.0:
            raise ConfigError(f"qdrop is a probability in [0, 1); got {self.qdrop}.")

    @property
    def seconds(self) -> float | None:
        return parse_budget(self.budget)[0]

    @property
    def steps(self) -> int | None:
        return parse_budget(self.budget)[1]

    def to_dict(self) -> dict:
        return {"budget": self.budget, "holdout": self.holdout, "batch_size": self.batch_size,
                "augment": self.augment, "jitter": self.jitter, "lr": self.lr, "patience": self.patience,
                "eval_every": self.eval_every, "qdrop": self.qdrop, "features": self.features,
                "feature_weight": self.feature_weight, "seed": self.seed}
