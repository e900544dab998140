"""The fidelity guard: a static INT8 model that has lost its output's signal does not ship where
the weight-only form of the same plan keeps it.

The plan's choices (clipping level, algorithms, float layers) each make the simulation closer to
FP32, but nothing bounds how close it ends: a model whose activations do not survive one
per-tensor 8-bit grid still gets a static plan. basic-pitch (a note transcriber) is such a model:
its static INT8 plan keeps 6.8 dB of its note output on calibration audio (mask IoU 0.42 on the
zoo's held-out audio), its weight-only form 22 dB (0.90). So after emit, the QDQ model itself runs
on a few calibration samples against FP32 (ONNX Runtime, the real kernels), and the float task
output that kept least of its signal is judged (`OutputError.worst_sqnr`); under `FLOOR_DB`
(noise a third of the signal's amplitude: no task survives that) the weight-only form is emitted
and measured the same way, and it ships when it is at least `MARGIN_DB` closer.

SQNR does not see decisions. Where an output is a probability distribution (rows that sum to 1:
a classifier's softmax, a recognizer's per-step characters), the decisions are its argmaxes, and a
sample keeps them when every one is FP32's. PP-OCRv4's recognizer keeps 15 dB under static INT8
(above the floor) yet only 56% of calibration lines keep every per-step argmax (93% of the zoo's
held-out strings), where its weight-only form keeps 97% (99% of strings). `int8` is the accuracy-
first preset: a static model that changes the decisions of more than 1 - `DECISION_FLOOR` of the
calibration samples (up to `DECISION_SAMPLES`) ships in the weight-only form when that changes at
most half as many. Every model that keeps its signal and its decisions is untouched: the guard
never trades speed for accuracy there.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from lowbit.data import Batch
from lowbit.metrics.output_error import OutputError, softmax_rows
from lowbit.onnx.session import run_batch, session

FLOOR_DB = 10.0
MARGIN_DB = 6.0
SAMPLES = 16
# the share of samples whose decisions the accuracy-first preset keeps (the zoo's bars for decisions
# and recognized strings); measured on up to DECISION_SAMPLES batches (16 would count in 6% steps)
DECISION_FLOOR = 0.97
DECISION_SAMPLES = 64
# each node's reason in the plan (the model file records it, so it holds no measured number)
WEIGHT_ONLY_FOR_FIDELITY = ("the static INT8 model lost its output's signal or decisions on calibration data where "
                            "INT8 weights alone keep them (numbers in the report's fidelity_check)")


def distribution(x: np.ndarray) -> bool:
    """Rows of at least two probabilities along the last axis, each row summing to 1."""
    x = np.asarray(x)
    return np.issubdtype(x.dtype, np.floating) and x.ndim >= 2 and x.shape[-1] >= 2 and softmax_rows(x)


@dataclass
class FidelityCheck:
    """The emitted static INT8 model's output SQNR vs FP32 on `samples` calibration batches, and the
    weight-only form's where the static one fell under the floor."""

    qdq_sqnr_db: float
    samples: int
    error: str
    weight_only_sqnr_db: float | None = None
    floor_db: float = FLOOR_DB
    margin_db: float = MARGIN_DB
    # share of the samples whose every argmax of a distribution output is FP32's (None: no such output)
    decisions_kept: float | None = None
    weight_only_decisions_kept: float | None = None
    decision_floor: float = DECISION_FLOOR
    decision_samples: int | None = None  # the calibration samples the shares are counted on

    @property
    def lost_signal(self) -> bool:
        return self.qdq_sqnr_db < self.floor_db

    @property
    def lost_decisions(self) -> bool:
        return self.decisions_kept is not None and self.decisions_kept < self.decision_floor

    @property
    def needs_weight_only(self) -> bool:
        """Whether the weight-only form is worth emitting and measuring."""
        return self.lost_signal or self.lost_decisions

    @property
    def _signal_wins(self) -> bool:
        return (self.lost_signal and self.weight_only_sqnr_db is not None
                and self.weight_only_sqnr_db >= self.qdq_sqnr_db + self.margin_db)

    @property
    def _decisions_win(self) -> bool:
        if not self.lost_decisions or self.weight_only_decisions_kept is None or self.weight_only_sqnr_db is None:
            return False
        halved = 1.0 - self.weight_only_decisions_kept <= (1.0 - self.decisions_kept) / 2
        return halved and self.weight_only_sqnr_db >= self.qdq_sqnr_db  # and no further from FP32's values

    @property
    def weight_only_wins(self) -> bool:
        return self._signal_wins or self._decisions_win

    def why(self) -> str:
        if self._signal_wins:
            return (f"the static INT8 model kept {self.qdq_sqnr_db:.1f} dB of FP32's output on {self.samples} "
                    f"calibration samples (under {self.floor_db:.0f} dB: its activations do not survive 8-bit "
                    f"grids), INT8 weights alone keep {self.weight_only_sqnr_db:.1f} dB")
        return (f"the static INT8 model kept every decision of FP32 (argmax of its probability outputs) on "
                f"{self.decisions_kept:.0%} of {self.decision_samples} calibration samples (under {self.decision_floor:.0%}; "
                f"{self.qdq_sqnr_db:.1f} dB), INT8 weights alone on {self.weight_only_decisions_kept:.0%} "
                f"({self.weight_only_sqnr_db:.1f} dB)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shipped"] = "weight-only" if self.weight_only_wins else "static INT8"
        return d


class OutputFidelity:
    """Measures models against FP32 (run once): on the first SAMPLES calibration batches the SQNR of
    the task output that kept least of its signal (`OutputError.worst_sqnr`), and where an output is
    a probability distribution, on the first DECISION_SAMPLES batches the share of samples (axis 0)
    whose argmaxes along the last axis are all FP32's. A recurrent
    state the data carries from call to call (`states`, the outputs of `stateful` pairs) is not a
    task output: its error shows in the next call's outputs, which calibration runs with the
    state FP32 carried, so it is left out (Silero's sequence model under `int8`: its LSTM states
    keep 10.8 dB on calibration, its speech probabilities 24.7 dB and 98% of FP32's decisions)."""

    def __init__(self, fp32: onnx.ModelProto, calib: Iterable[Batch], samples: int = SAMPLES,
                 states: Iterable[str] = (), decision_samples: int = DECISION_SAMPLES) -> None:
        batches = list(itertools.islice(iter(calib), max(samples, decision_samples)))
        names = [o.name for o in fp32.graph.output]
        self.outputs = [n for n in names if n not in set(states)] or names
        # full outputs of the first `samples` batches (the SQNR); argmaxes only of the rest: a
        # segmentation map's probabilities over 64 batches would hold gigabytes
        self.reference: list[list[np.ndarray]] = []
        self.argmaxes: list[list[np.ndarray]] = []
        sess = session(fp32, arena=False)
        first = run_batch(sess, batches[0], self.outputs) if batches else []
        self.deciding = [i for i, x in enumerate(first) if distribution(x)]
        self.batches = batches if self.deciding else batches[:samples]
        for n, batch in enumerate(self.batches):
            out = first if n == 0 else run_batch(sess, batch, self.outputs)
            if n < samples:
                self.reference.append(out)
            if self.deciding:
                self.argmaxes.append(self._argmaxes(out))
        del sess
        self.measure = OutputError(self.reference)

    def _argmaxes(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(outputs[i]).argmax(-1) for i in self.deciding]

    def measured(self, model: onnx.ModelProto) -> tuple[float, float | None]:
        """(worst output SQNR in dB, share of samples keeping every decision or None) of `model`."""
        sess = session(model, arena=False)
        out, kept = [], []
        for n, batch in enumerate(self.batches):
            got = run_batch(sess, batch, self.outputs)
            if n < len(self.reference):
                out.append(got)
            if self.deciding:
                kept.append(_same_decisions(self.argmaxes[n], self._argmaxes(got)))
        del sess
        return float(self.measure.worst_sqnr(self.reference, out)), float(np.concatenate(kept).mean()) if kept else None

    @property
    def decision_count(self) -> int | None:
        """How many samples the decisions are counted on (None: no distribution output)."""
        return sum(len(a[0]) for a in self.argmaxes) if self.deciding else None

    def check(self, qdq: onnx.ModelProto) -> FidelityCheck:
        sqnr_db, decisions = self.measured(qdq)
        return FidelityCheck(sqnr_db, len(self.reference), self.measure.description, decisions_kept=decisions,
                             decision_samples=self.decision_count)


def _same_decisions(reference: list[np.ndarray], candidate: list[np.ndarray]) -> np.ndarray:
    """Per sample of a batch (axis 0): every argmax of every distribution output is FP32's."""
    same = None
    for r, c in zip(reference, candidate):
        # a value-dependent length that changed: every sample of the batch changed
        s = (r == c).reshape(len(r), -1).all(axis=1) if r.shape == c.shape else np.zeros(len(r), dtype=bool)
        same = s if same is None else same & s
    return same
