"""One `lowbit.quantize` call's state as its stages (load, calibrate, search, emit) hand it on, and
how the call reads its data."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import onnx

from lowbit.config import QuantConfig
from lowbit.data import FeedSource
from lowbit.data.stateful import model_feeds
from lowbit.emit.size_check import Sizes
from lowbit.load.model import LoadedModel
from lowbit.load.prepare import PreparedModel
from lowbit.plan.quant_plan import QuantPlan
from lowbit.target.model_speed import ModelSpeed


@dataclass(frozen=True)
class DataOptions:
    """How quantize reads its data (calibration and evaluation alike)."""

    batch_axes: dict | None
    stateful: dict | None
    preprocess: Any
    skip_bad: bool

    def feeds(self, source: Any, prepared: PreparedModel, labels: Any = None, limit: int | None = None,
              model: onnx.ModelProto | None = None) -> FeedSource:
        """`source` as feeds for the prepared model's inputs (`model`: the graph whose state shapes a
        stateful run reads, the prepared one by default)."""
        return model_feeds(source, prepared.proto if model is None else model, prepared.inputs,
                           batch_axes=self.batch_axes, stateful=self.stateful, labels=labels,
                           preprocess=self.preprocess, limit=limit, skip_bad=self.skip_bad)


@dataclass
class QuantizeJob:
    """One quantize call's state as its stages hand it on. `prepared.proto` is the float model the
    plan applies to; a stage that replaces it drops the previous one (one float model alive)."""

    loaded: LoadedModel
    prepared: PreparedModel
    source_sizes: Sizes  # the output must be smaller (checked after emit)
    cfg: QuantConfig
    plan: QuantPlan | None = None
    reapplied: bool = False  # the plan was given, not calibrated
    before_fit: onnx.ModelProto | None = None  # float weights for layers kept in float
    reference: onnx.ModelProto | None = None  # the prepared FP32 model, kept for a budget search
    calib: FeedSource | None = None
    search: dict | None = None
    speed: ModelSpeed | None = None  # the whole-model INT8 vs FP32 timing (lowbit.target.model_speed)
    fidelity: dict | None = None  # the emitted static model's output SQNR (lowbit.emit.fidelity_guard)
    state_outputs: tuple[str, ...] = ()  # outputs carried back as state (stateful data)
    notes: list[str] = field(default_factory=list)

    def take_float_model(self) -> onnx.ModelProto:
        """The float model, handed over: the job keeps no reference to it meanwhile."""
        proto, self.prepared = self.prepared.proto, replace(self.prepared, proto=onnx.ModelProto())
        return proto

    def set_float_model(self, proto: onnx.ModelProto) -> None:
        self.prepared = replace(self.prepared, proto=proto)
