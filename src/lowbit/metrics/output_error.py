"""The error lowbit's plan choices minimise: a simulated plan's outputs against FP32's.

Pooled squared error (SQNR) suits an output that holds one quantity. A raw detection head holds
two side by side: YOLOv8 (N, 4 + C, anchors) and YOLOv5 / YOLOX (N, anchors, 5 + C) put box
coordinates in pixels next to class probabilities, and the pixels' squares drown the
probabilities'. On YOLOv8n (nudenet, 64 calibration photos of people) the clipping level with 3 dB
more pooled SQNR cut rare large activations that make confident scores: the class logits of FP32's
detections fell by 0.47 on average and 9% of the detections were lost (F1 0.951), where the level
it rejected lost 0.15 and kept F1 0.973. So each part of such a head is judged by its own
noise-to-signal ratio: its squared error is divided by its energy in the reference outputs, and the
SQNR is that of the mean of the parts' ratios (boxes and scores count alike, whatever their units).

A model with several float outputs (a face detector's scores, boxes and landmarks per stride; a
recurrent model's state beside its prediction; a transcriber's notes, onsets and pitch contour) is
judged the same way one level up: each output by its own noise-to-signal ratio, the outputs alike.
Judging the first output alone left the others' error unseen by every choice. An output that is
not float (indices, counts) or is zero in FP32 is left out; a model with one float output is
measured exactly as before. `worst_sqnr` is the least of the outputs' own SQNRs (the fidelity
guard asks whether any output lost its signal).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lowbit.core.fidelity import aligned, sqnr_db, squared_error

# float32 sigmoids reach 1.0000001 (PP-OCRv4 det): a rounding step, not a value outside [0, 1]
PROB_TOLERANCE = 1e-6


def probabilities(x: np.ndarray) -> bool:
    """Every value finite and in [0, 1] (up to a float32 rounding step)."""
    return x.size > 0 and bool(np.all(np.isfinite(x))) and float(x.min()) >= -PROB_TOLERANCE and \
        float(x.max()) <= 1.0 + PROB_TOLERANCE


def softmax_rows(x: np.ndarray) -> bool:
    """Probabilities whose rows along the last axis each sum to 1 (a softmax's output)."""
    return probabilities(x) and bool(np.allclose(np.sum(x, axis=-1, dtype=np.float64), 1.0, atol=1e-3))


def yolo_rows(x: np.ndarray) -> bool:
    """(N, 4 + C, anchors), anchors many more than rows, rows 4: probabilities (YOLOv8 and later)."""
    return x.ndim == 3 and 5 <= x.shape[1] and x.shape[2] >= max(100, 8 * x.shape[1]) and probabilities(x[:, 4:])


def yolo_columns(x: np.ndarray) -> bool:
    """(N, anchors, 4 + K), anchors more than columns, columns 4: probabilities (YOLOv5, YOLOX)."""
    return x.ndim == 3 and x.shape[2] >= 6 and x.shape[1] > x.shape[2] and probabilities(x[:, :, 4:])


def head_parts(x: np.ndarray) -> tuple[tuple[slice, ...], ...] | None:
    """Index tuples of the box and score parts of a raw detection head `x` (N, ...), or None for
    an output of one quantity (and for heads whose boxes are probabilities too: no units to mix)."""
    for rows, layout in ((True, yolo_rows), (False, yolo_columns)):
        if layout(x):
            boxes, scores = ((slice(None), slice(0, 4)), (slice(None), slice(4, None))) if rows else \
                ((slice(None), slice(None), slice(0, 4)), (slice(None), slice(None), slice(4, None)))
            return None if probabilities(x[boxes]) else (boxes, scores)
    return None


class _OneOutput:
    """Squared error of one output: pooled, or a detection head's parts each over its energy."""

    def __init__(self, reference: list[np.ndarray]) -> None:
        self.parts: tuple[tuple[slice, ...], ...] | None = None
        self.weights: tuple[float, ...] = ()
        shapes = {np.shape(r)[1:] for r in reference}
        if not reference or len(shapes) != 1:  # value-dependent lengths: pooled
            return
        stacked = np.concatenate([np.asarray(r) for r in reference])
        parts = head_parts(stacked)
        if parts is None:
            return
        energy = [float(np.sum(np.square(stacked[p], dtype=np.float64))) for p in parts]
        if min(energy) > 0:
            self.parts, self.weights = parts, tuple(1.0 / (len(parts) * e) for e in energy)

    def error(self, reference: np.ndarray, candidate: np.ndarray) -> float:
        if self.parts is None:
            return squared_error(reference, candidate)
        if np.ndim(reference) != np.ndim(candidate):  # not a head's layout any more: count it all, at the scores' weight
            return max(self.weights) * squared_error(reference, candidate)
        r, c = aligned(reference, candidate)
        return sum(w * float(np.sum(np.square(r[p] - c[p]))) for w, p in zip(self.weights, self.parts))

    def signal(self, reference: np.ndarray) -> float:
        r = np.asarray(reference, dtype=np.float64)
        if self.parts is None:
            return float(np.sum(r * r))
        return sum(w * float(np.sum(r[p] * r[p])) for w, p in zip(self.weights, self.parts))


Outputs = Sequence[np.ndarray] | np.ndarray  # one batch's outputs (a bare array: a model's only output)


def _outputs(x: Outputs) -> Sequence[np.ndarray]:
    return (x,) if isinstance(x, np.ndarray) else x


def _is_float(x: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(x).dtype, np.floating)


class OutputError:
    """Squared error of candidate outputs against `reference` (per batch, FP32's outputs in the
    graph's order; a bare array per batch stands for a model's one output): each float output by
    its own noise-to-signal ratio, a detection head's parts by their reference energy (module doc).

    >>> m = OutputError(reference_outputs_per_batch)                     # doctest: +SKIP
    >>> m.sqnr(reference_outputs_per_batch, candidate_outputs_per_batch)  # doctest: +SKIP
    """

    def __init__(self, reference: list[Outputs]) -> None:
        batches = [_outputs(r) for r in reference]
        count = min((len(b) for b in batches), default=0)
        columns = [[b[o] for b in batches] for o in range(count)]
        measured = {o: _OneOutput(col) for o, col in enumerate(columns) if all(_is_float(x) for x in col)}
        energy = {o: sum(m.signal(x) for x in columns[o]) for o, m in measured.items()}
        self.outputs = {o: m for o, m in measured.items() if energy[o] > 0} or \
            ({0: _OneOutput(columns[0])} if columns else {})
        # one output keeps its own units: a single-output model's numbers do not change
        self.scale = {o: 1.0 for o in self.outputs} if len(self.outputs) == 1 else \
            {o: 1.0 / (len(self.outputs) * energy[o]) for o in self.outputs}

    @property
    def parts(self) -> tuple[tuple[slice, ...], ...] | None:
        """The first measured output's detection-head parts (None: pooled)."""
        return next(iter(self.outputs.values())).parts if self.outputs else None

    @property
    def description(self) -> str:
        heads = any(m.parts is not None for m in self.outputs.values())
        what = ("detection head: box coordinates and scores, each relative to its own energy in FP32's outputs"
                if heads else "all values pooled")
        if len(self.outputs) > 1:
            return f"{len(self.outputs)} outputs, each relative to its own energy in FP32's outputs; within each, {what}"
        return what

    def error(self, reference: Outputs, candidate: Outputs) -> float:
        r, c = _outputs(reference), _outputs(candidate)
        return sum(s * self.outputs[o].error(r[o], c[o]) for o, s in self.scale.items())

    def signal(self, reference: Outputs) -> float:
        r = _outputs(reference)
        return sum(s * self.outputs[o].signal(r[o]) for o, s in self.scale.items())

    def sqnr(self, reference: list[Outputs], candidates: list[Outputs]) -> float:
        """SQNR pooled over the batches (outputs and parts weighted as above)."""
        return sqnr_db(sum(self.signal(r) for r in reference),
                       sum(self.error(r, c) for r, c in zip(reference, candidates)))

    def worst_sqnr(self, reference: list[Outputs], candidates: list[Outputs]) -> float:
        """The least of the measured outputs' own SQNRs over the batches."""
        refs, cands = [_outputs(r) for r in reference], [_outputs(c) for c in candidates]
        return min(sqnr_db(sum(m.signal(r[o]) for r in refs), sum(m.error(r[o], c[o]) for r, c in zip(refs, cands)))
                   for o, m in self.outputs.items())
