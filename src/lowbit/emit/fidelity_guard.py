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
and measured the same way, and it ships when it is at least `MARGIN_DB` closer. Every model that
keeps more than the floor is untouched: the guard never trades speed for accuracy there.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import onnx

from lowbit.data import Batch
from lowbit.metrics.output_error import OutputError
from lowbit.onnx.session import run_batch, session

FLOOR_DB = 10.0
MARGIN_DB = 6.0
SAMPLES = 16
# each node's reason in the plan (the model file records it, so it holds no measured number)
WEIGHT_ONLY_FOR_FIDELITY = ("the static INT8 model lost its output's signal on calibration data where INT8 weights "
                            "alone keep it (numbers in the report's fidelity_check)")


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

    @property
    def lost_signal(self) -> bool:
        return self.qdq_sqnr_db < self.floor_db

    @property
    def weight_only_wins(self) -> bool:
        return (self.lost_signal and self.weight_only_sqnr_db is not None
                and self.weight_only_sqnr_db >= self.qdq_sqnr_db + self.margin_db)

    def why(self) -> str:
        return (f"the static INT8 model kept {self.qdq_sqnr_db:.1f} dB of FP32's output on {self.samples} calibration "
                f"samples (under {self.floor_db:.0f} dB: its activations do not survive 8-bit grids), INT8 weights "
                f"alone keep {self.weight_only_sqnr_db:.1f} dB")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shipped"] = "weight-only" if self.weight_only_wins else "static INT8"
        return d


class OutputFidelity:
    """Measures models against FP32 on the first SAMPLES calibration batches (FP32 run once): the
    SQNR of the task output that kept least of its signal (`OutputError.worst_sqnr`). A recurrent
    state the data carries from call to call (`states`, the outputs of `stateful` pairs) is not a
    task output: its error shows in the next call's outputs, which calibration runs with the
    state FP32 carried, so it is left out (Silero's sequence model under `int8`: its LSTM states
    keep 10.8 dB on calibration, its speech probabilities 24.7 dB and 98% of FP32's decisions)."""

    def __init__(self, fp32: onnx.ModelProto, calib: Iterable[Batch], samples: int = SAMPLES,
                 states: Iterable[str] = ()) -> None:
        self.batches = list(itertools.islice(iter(calib), samples))
        names = [o.name for o in fp32.graph.output]
        self.outputs = [n for n in names if n not in set(states)] or names
        sess = session(fp32, arena=False)
        self.reference = [run_batch(sess, b, self.outputs) for b in self.batches]
        del sess
        self.measure = OutputError(self.reference)

    def sqnr_db(self, model: onnx.ModelProto) -> float:
        sess = session(model, arena=False)
        out = [run_batch(sess, b, self.outputs) for b in self.batches]
        del sess
        return float(self.measure.worst_sqnr(self.reference, out))

    def check(self, qdq: onnx.ModelProto) -> FidelityCheck:
        return FidelityCheck(self.sqnr_db(qdq), len(self.batches), self.measure.description)
