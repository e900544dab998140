"""Fidelity of a candidate model to its FP32 reference, accumulated batch by batch."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lowbit.core.fidelity import aligned, cosine_per_sample, sqnr_db
from lowbit.data import Batch
from lowbit.data.stateful import StateCarry, run_carried
from lowbit.onnx.session import run_batch, session
from lowbit.progress import Progress, null_progress
from lowbit.verify.outputs import OutputStore, first_sample_outputs


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class FidelityAccumulator:
    """SQNR, cosine, top-1 agreement and KL of candidate vs reference outputs, and top-1 accuracy
    of both when labels are given. Metrics are for the first output; SQNR for every output."""

    def __init__(self, output_names: list[str]) -> None:
        self.names = output_names
        self.signal = np.zeros(len(output_names))
        self.noise = np.zeros(len(output_names))
        self.cos_sum = 0.0
        self.cos_n = 0
        self.samples = 0
        self.outputs: OutputStore | None = None      # per-sample outputs, when compare_models collects
        self.reference: OutputStore | None = None
        self.agree = 0
        self.kl_sum = 0.0
        self.classifier = True
        self.correct_ref = self.correct_cand = self.labeled = 0

    def update(self, ref: list[np.ndarray], cand: list[np.ndarray], labels: np.ndarray | None = None) -> None:
        for k, (r, c) in enumerate(zip(ref, cand)):
            r64, c64 = aligned(r, c)  # a decoder's output may stop earlier or later than FP32's
            self.signal[k] += float(np.sum(r64 * r64))
            self.noise[k] += float(np.sum((r64 - c64) ** 2))
        r, c = aligned(ref[0], cand[0])
        n = r.shape[0] if r.ndim else 1
        rf, cf = r.reshape(n, -1), c.reshape(n, -1)
        # two zero vectors have no angle: left out of the mean, never counted as 1 (lowbit.metrics.fidelity)
        cos, defined = cosine_per_sample(rf, cf)
        self.cos_sum += float(cos[defined].sum())
        self.cos_n += int(defined.sum())
        self.samples += n
        self.classifier = self.classifier and r.ndim == 2 and r.shape[1] > 1
        if self.classifier:
            rt, ct = r.argmax(axis=1), c.argmax(axis=1)
            self.agree += int((rt == ct).sum())
            p, q = _softmax(r), _softmax(c)
            self.kl_sum += float(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12))))
            if labels is not None:
                lab = np.asarray(labels).reshape(-1)
                self.correct_ref += int((rt == lab).sum())
                self.correct_cand += int((ct == lab).sum())
                self.labeled += lab.size

    def result(self) -> dict:
        out = {
            "samples": self.samples,
            "sqnr_db": sqnr_db(max(self.signal[0], 1e-300), self.noise[0]) if self.samples else None,
            "cosine": self.cos_sum / self.cos_n if self.cos_n else None,
            "top1_agreement": self.agree / self.samples if self.samples and self.classifier else None,
            "kl": self.kl_sum / self.samples if self.samples and self.classifier else None,
            "per_output_sqnr_db": {n: sqnr_db(max(s, 1e-300), e) for n, s, e in zip(self.names, self.signal, self.noise)},
        }
        return out

    def accuracy(self) -> tuple[dict | None, dict | None]:
        """(reference, candidate) top-1 accuracy on the labeled samples, or (None, None)."""
        if not self.labeled:
            return None, None
        return ({"top1": self.correct_ref / self.labeled, "n": self.labeled},
                {"top1": self.correct_cand / self.labeled, "n": self.labeled})


def compare_models(reference: bytes, candidates: dict[str, bytes], data: Iterable[Batch],
                   progress: Progress = null_progress, total: int | None = None, collect: bool = False
                   ) -> tuple[dict[str, FidelityAccumulator], int]:
    """Run the reference and every candidate on the same batches; one accumulator per candidate.
    Stateful data (`lowbit.data.stateful`): every model carries its own state along each sequence.
    `collect`: each accumulator also keeps its per-sample outputs (`.outputs`) and the reference's
    (`.reference`, shared), for the task metrics."""
    ref = session(reference)
    names = [o.name for o in ref.get_outputs()]
    cands = {k: session(v) for k, v in candidates.items()}
    accs = {k: FidelityAccumulator(names) for k in candidates}
    if collect:
        ref_store = OutputStore(names)
        for a in accs.values():
            a.reference, a.outputs = ref_store, OutputStore(names, axes=ref_store.axes)
    pairs = getattr(data, "pairs", None)
    carries = {k: StateCarry(pairs) for k in ["", *cands]} if pairs else {}
    seen = 0
    for batch in data:
        if pairs:
            r, _ = run_carried(ref, batch, names, carries[""])
            data.hand_back(batch, dict(zip(names, r)))  # type: ignore[attr-defined]
        else:
            r = run_batch(ref, batch)
        keep = collect and ref_store.room()
        if keep:
            ref_store.add(r, batch.size, batch.labels,
                          probe=None if pairs else lambda b=batch: first_sample_outputs(ref, b))
        for k, s in cands.items():
            c = run_carried(s, batch, names, carries[k])[0] if pairs else run_batch(s, batch)
            accs[k].update(r, c, batch.labels)
            if keep:
                accs[k].outputs.add(c, batch.size)
        seen += 1
        progress("evaluate", seen, total)
    return accs, seen
