"""Which metrics a report computes: the user's, else the task the FP32 outputs show where that is
unambiguous, else generic fidelity (SQNR, cosine). The first choice is the report's headline.

The rules read the reference's outputs stacked over samples, (N, ...), so they generalise to models
lowbit has not seen; each choice records its reason, shown in the report. Give `--metric` to
override any of them.
"""

from __future__ import annotations

import math
import re

import numpy as np

from lowbit.metrics.base import METRICS
from lowbit.metrics.output_error import probabilities as _probabilities
from lowbit.metrics.output_error import softmax_rows, yolo_columns, yolo_rows
from lowbit.metrics.spec import MetricChoice

EMBEDDING_NAMES = re.compile(r"emb|feat|vector|descriptor|encod", re.IGNORECASE)


def _log_softmax_rows(x: np.ndarray) -> bool:
    return x.size > 0 and bool(np.all(np.isfinite(x))) and float(x.max()) <= 1e-4 and bool(
        np.allclose(np.exp(x.astype(np.float64)).sum(axis=-1), 1.0, atol=1e-3))


# a CTC head's blank wins most steps (between characters and in margins): 78% on PP-OCRv4 rec and
# ddddocr; an embedding or LM's logits rarely have one fixed first/last class winning a third
BLANK_SHARE = 0.3


def ctc_blank(x: np.ndarray) -> tuple[int, float] | None:
    """(blank id, share of steps it wins) of per-step scores `x` (N, T, C): the first or last
    class where it is the argmax of at least BLANK_SHARE of all steps; None otherwise."""
    if x.ndim != 3 or x.shape[1] < 2 or x.shape[2] < 3 or not np.issubdtype(x.dtype, np.floating):
        return None
    ids = x.argmax(axis=-1)
    for blank in (0, x.shape[2] - 1):
        share = float(np.mean(ids == blank))
        if share >= BLANK_SHARE:
            return blank, share
    return None


def _ctc(name: str, x: np.ndarray, what: str, blank: int = 0) -> list[MetricChoice]:
    why = f"output {name} {list(x.shape[1:])}: {what} (CTC, blank {blank})"
    opts = {"blank": blank} if blank else {}
    return [_choice("ctc-exact", (name,), why, **opts), _choice("ctc-cer", (name,), why, **opts)]


def _choice(name: str, outputs: tuple[str, ...], reason: str, **options) -> MetricChoice:
    return MetricChoice(METRICS.create(name, **options), name, outputs, "inferred", reason)


def yolox_size(rows: int, strides: tuple[int, ...] = (8, 16, 32)) -> int | None:
    """The square input size whose YOLOX grids at `strides` have `rows` cells in all, or None."""
    per_pixel = sum(1 / s**2 for s in strides)
    size = int(round(math.sqrt(rows / per_pixel)))
    if size % max(strides) or sum((size // s) ** 2 for s in strides) != rows:
        return None
    return size


def infer_task(name: str, x: np.ndarray) -> list[MetricChoice]:
    """Task metrics for one output `x` (N, ...) named `name`; [] where its shape says nothing clear."""
    o = (name,)
    n = len(x)
    per = x.reshape(n, -1).shape[1] if n else 0
    # a model that decodes in its graph (argmax over classes) outputs class ids per step: compare the
    # sequences as CTC reads them (repeats merged, blank 0), as for per-step scores
    if x.ndim == 2 and x.shape[1] > 1 and np.issubdtype(x.dtype, np.integer):
        return _ctc(name, x, "a sequence of class ids per sample")
    # before the YOLO rule: a (T, C) softmax has as many columns as a head has anchors
    if x.ndim == 3 and x.shape[1] > 1 and x.shape[2] > 2 and (softmax_rows(x) or _log_softmax_rows(x)):
        return _ctc(name, x, "per-step class probabilities" if softmax_rows(x) else
                    "per-step log-probabilities")
    if yolo_rows(x):
        return [_choice("detection-yolo", o, f"output {name} {list(x.shape[1:])}: a YOLO head (4 box rows + "
                                             f"{x.shape[1] - 4} class scores, {x.shape[2]} anchors)")]
    if yolo_columns(x):
        size = yolox_size(x.shape[1])
        if size:
            return [_choice("detection-yolox", o, f"output {name} {list(x.shape[1:])}: a raw YOLOX head on a "
                                                  f"{size}x{size} input", size=size)]
    blank = ctc_blank(x) if not _probabilities(x) else None
    if blank:  # raw per-step scores (ddddocr's (T, 1, C) logits, cut per sample to (T, C))
        return _ctc(name, x, f"per-step class scores, class {blank[0]} winning {blank[1]:.0%} of the steps "
                             "as a CTC blank does", blank[0])
    if per == 1 and _probabilities(x):
        return [_choice("decisions@0.5", o, f"output {name}: one probability per sample")]
    if x.ndim == 2 and x.shape[1] > 1:
        norms = np.linalg.norm(x.astype(np.float64), axis=1)
        if softmax_rows(x):
            kind = f"output {name} [N, {x.shape[1]}]: class probabilities (rows sum to 1)"
        elif _probabilities(x):  # independent probabilities (multi-label, per-frame): decisions
            return [_choice("decisions@0.5", o, f"output {name} [N, {x.shape[1]}]: independent probabilities "
                                                "(values in [0, 1], rows not summing to 1)")]
        elif np.allclose(norms, 1.0, atol=1e-3) or EMBEDDING_NAMES.search(name) or (
                x.shape[1] >= 64 and x.shape[1] % 64 == 0):
            why = ("L2-normalised rows" if np.allclose(norms, 1.0, atol=1e-3) else "its name" if
                   EMBEDDING_NAMES.search(name) else "a width that is a multiple of 64")
            out = [_choice("cosine", o, f"output {name} [N, {x.shape[1]}]: an embedding ({why})")]
            if n >= 2:
                out.append(_choice("nn-kept", o, "embedding: nearest neighbour in the evaluated set"))
            return out
        else:
            kind = f"output {name} [N, {x.shape[1]}]: class scores"
        out = [_choice("top1-agreement", o, kind)]
        if x.shape[1] > 5:
            out.append(_choice("top5-agreement", o, kind))
        return out
    if x.ndim in (3, 4) and (x.ndim == 3 or x.shape[1] == 1) and min(x.shape[-2:]) >= 8 and _probabilities(x):
        return [_choice("mask-iou", o, f"output {name} {list(x.shape[1:])}: a probability map", threshold=0.5)]
    return []


def generic_reason(name: str, x: np.ndarray) -> str:
    """Why the report falls back to SQNR, and which --metric to pass for the tasks outputs of this
    shape usually have (the user knows the task; the shapes alone did not say it clearly)."""
    dims = list(x.shape[1:])
    if x.ndim == 3:
        hint = ("per-step scores of a text recognizer: --metric ctc-exact (blank=ID if not 0); a detector "
                "head: --metric detection-yolo, detection-yolox:size=S or detection-ssd; a probability map: "
                "--metric mask-iou:threshold=T")
    elif x.ndim == 4:
        hint = "a segmentation or heat map: --metric mask-iou:threshold=T"
    elif x.ndim == 2:
        hint = ("class scores: --metric top1-agreement; an embedding: --metric cosine; independent "
                "probabilities: --metric decisions@0.5")
    else:
        hint = "a score per sample: --metric decisions@0.5"
    return (f"no task recognised from output {name} {dims}: generic fidelity. If it is {hint} "
            "(all: `lowbit list metrics`)")


def _ssd(names: list[str], outs: dict[str, np.ndarray]) -> list[MetricChoice]:
    if len(names) < 2:
        return []
    b, s = outs[names[0]], outs[names[1]]
    if b.ndim == 3 and s.ndim == 3 and b.shape[2] == 4 and s.shape[1] == b.shape[1] and s.shape[2] >= 2 \
            and _probabilities(s):
        return [_choice("detection-ssd", (names[0], names[1]), f"outputs {names[0]} [N, {b.shape[1]}, 4] and "
                                                                f"{names[1]} [N, {s.shape[1]}, {s.shape[2]}]: SSD "
                                                                "boxes and class scores")]
    return []


def choose_metrics(outputs: dict[str, np.ndarray], given: MetricChoice | None = None,
                   labels: np.ndarray | None = None) -> list[MetricChoice]:
    """The report's metrics, headline first: `given`, else inferred from the reference's `outputs`
    (name -> (N, ...), in the model's order; the first output's task, and the same task on later
    outputs that show it), else generic; then SQNR of the scored output (per
    output where there are several) and labeled top-1 accuracy where labels fit a classifier."""
    names = list(outputs)
    if given is not None:
        chosen = [given]
    else:
        chosen = _ssd(names, outputs) or (infer_task(names[0], outputs[names[0]]) if names else [])
        # more outputs of the headline's kind (basic-pitch's note, onset and contour maps) get it too
        for k in names[1:] if chosen and chosen[0].outputs == (names[0],) else []:
            same = [c for c in infer_task(k, outputs[k])[:1] if c.name == chosen[0].name]
            chosen += same
    if not chosen and names:
        chosen = [MetricChoice(METRICS.create("sqnr"), "sqnr", (names[0],), "generic",
                               generic_reason(names[0], outputs[names[0]])),
                  MetricChoice(METRICS.create("cosine"), "cosine", (names[0],), "generic", "generic fidelity")]
    have = {(c.name, c.outputs or (names[0],) if names else ()) for c in chosen}
    for k in names if len(names) > 1 else names[:1]:
        if ("sqnr", (k,)) not in have:
            chosen.append(MetricChoice(METRICS.create("sqnr"), "sqnr", (k,), "generic",
                                       "per-output SQNR" if len(names) > 1 else "generic fidelity"))
    first = outputs[names[0]] if names else None
    if labels is not None and first is not None and first.ndim == 2 and first.shape[1] > 1 \
            and np.asarray(labels).ndim == 1 and len(labels) == len(first) \
            and np.issubdtype(np.asarray(labels).dtype, np.integer):
        chosen.append(MetricChoice(METRICS.create("top1-accuracy"), "top1-accuracy", (names[0],), "inferred",
                                   "labels given"))
    return chosen
