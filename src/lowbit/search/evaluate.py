"""Score a plan quickly: lowbit's float simulation of it, run by ONNX Runtime on a small held-out
set, compared with the FP32 model's outputs (computed once)."""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from lowbit.core.fidelity import sqnr
from lowbit.data import Batch
from lowbit.emit import emit_simulation
from lowbit.metrics import METRICS, Metric
from lowbit.onnx.session import run_batch, session
from lowbit.plan.quant_plan import QuantPlan
from lowbit.search.checkpoint import load_checkpoint, save_checkpoint
from lowbit.search.float_layers import restore_float_layers
from lowbit.search.held import MAX_HELD_BYTES, MAX_HELD_SAMPLES, HoldCap, batch_nbytes

log = logging.getLogger(__name__)

MetricLike = Metric | str | Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]


def as_metric(metric: MetricLike) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]:
    """A metric by registry name, a Metric, or any callable(reference, candidate, labels) -> float
    (higher is better)."""
    if isinstance(metric, str):
        m = METRICS.create(metric)
        return m.score
    if isinstance(metric, Metric):
        return metric.score
    if callable(metric):
        return metric
    raise TypeError(f"metric must be a name, a lowbit Metric or a callable; got {type(metric).__name__}")


@dataclass
class Score:
    metric: float
    sqnr_db: float


class PlanEvaluator:
    """Holds a small evaluation set in memory and the FP32 outputs on it."""

    def __init__(self, model: onnx.ModelProto, data: Iterable[Batch], metric: MetricLike = "top1-agreement",
                 checkpoint: str | Path | None = None, reference: onnx.ModelProto | None = None,
                 float_weights: onnx.ModelProto | None = None, max_samples: int = MAX_HELD_SAMPLES,
                 max_bytes: int = MAX_HELD_BYTES) -> None:
        """`model`: the float model the plan applies to; `reference`: the FP32 model whose outputs
        are the target (default `model`). They differ when algorithms re-weighted the float model
        (bias correction shifts biases to cancel INT8 error): scoring against that model would
        reward plans for agreeing with a model nobody ships.
        `float_weights`: the float model before plan-stage algorithms; layers a plan keeps in float
        take their weights from it (`restore_float_layers`).
        `checkpoint`: a JSON file of scores by plan hash, written after every evaluation, so an
        interrupted search started again with the same file resumes where it stopped.
        `max_samples` / `max_bytes`: what it holds at most (inputs and FP32 outputs); where the data
        holds more, the rest is left unread, with a warning, and `held` says what was kept."""
        self.model = model
        self.float_weights = float_weights
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.cache: dict[str, list[float]] = {}
        if self.checkpoint is not None:  # checked like user input: a bad file is ignored and rebuilt
            self.cache = load_checkpoint(self.checkpoint)
        self.score_fn = as_metric(metric)
        ref = session(reference if reference is not None else model)
        cap = HoldCap(max_samples, max_bytes)
        self.batches: list[Batch] = []
        outputs = []
        for b in data:  # streamed: only what the cap admits is ever held
            if not cap.room():
                log.warning(cap.message(f"evaluation data ({getattr(data, 'description', 'batches')})"))
                break
            outputs.append(run_batch(ref, b)[0])
            self.batches.append(b)
            cap.add(b.size, batch_nbytes(b) + outputs[-1].nbytes)
        self.held = cap.record()  # None where everything was kept
        self.reference = np.concatenate(outputs)
        labels = [b.labels for b in self.batches]
        self.labels = np.concatenate(labels) if all(l is not None for l in labels) else None
        self.reference_score = float(self.score_fn(self.reference, self.reference, self.labels))
        self.evaluations = 0

    def on_model(self, model: onnx.ModelProto) -> PlanEvaluator:
        """The same data and FP32 outputs, scoring plans of another float model (a recovered one,
        its float layers' weights already in it); no checkpoint."""
        other = copy.copy(self)
        other.model, other.float_weights, other.checkpoint, other.cache = model, None, None, {}
        other.__dict__.pop("_model_key", None)
        return other

    def outputs(self, plan: QuantPlan) -> np.ndarray:
        sim = session(emit_simulation(self.float_model(plan), plan))
        return np.concatenate([run_batch(sim, b)[0] for b in self.batches])

    def float_model(self, plan: QuantPlan) -> onnx.ModelProto:
        """The float model `plan` applies to: its float layers with their own float weights."""
        if self.float_weights is None:
            return self.model
        return restore_float_layers(self.model, self.float_weights, plan)

    def score(self, plan: QuantPlan) -> Score:
        key = hashlib.sha256((plan.to_json() + self.model_key).encode()).hexdigest()
        if key in self.cache:
            return Score(*self.cache[key])
        self.evaluations += 1
        out = self.outputs(plan)
        score = Score(float(self.score_fn(self.reference, out, self.labels)), sqnr(self.reference, out))
        if self.checkpoint is not None:
            self.cache[key] = [score.metric, score.sqnr_db]
            if not save_checkpoint(self.checkpoint, self.cache):
                self.checkpoint = None  # warned once; the scores stay in memory
        return score

    @property
    def model_key(self) -> str:
        """Scores depend on the float model and the evaluation data as much as on the plan."""
        if not hasattr(self, "_model_key"):
            h = hashlib.sha256(self.model.graph.SerializeToString(deterministic=True))
            h.update(self.reference.tobytes())
            if self.float_weights is not None:
                h.update(self.float_weights.graph.SerializeToString(deterministic=True))
            self._model_key = h.hexdigest()
        return self._model_key
