"""How much evaluation data a search holds in memory: a cap on samples and bytes.

An evaluator scores every candidate plan on the same samples, so it keeps them (and the FP32
outputs on them) in memory; without a cap a 40k-sample evaluation set took 583 MB and a larger
one would take what it likes. The cap is sized for what a budget needs: a 1% budget on top-1
agreement wants about 2000 samples, ImageNet crops (224 x 224 float32, 0.6 MB each) included.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.data import Batch

MAX_HELD_SAMPLES = 20_000
MAX_HELD_BYTES = 3 * 2**29  # 1.5 GiB


def batch_nbytes(batch: Batch) -> int:
    """Bytes a batch holds (inputs and labels)."""
    labels = getattr(batch.labels, "nbytes", 0)
    return int(sum(v.nbytes for v in batch.feeds.values()) + labels)


@dataclass
class HoldCap:
    """Counts what is held; `room()` turns False (and `hit` True) once either limit is reached,
    so at most one batch more than the limit is ever held.

    >>> cap = HoldCap(max_samples=2)
    >>> cap.room() and cap.add(2, 100) is None and cap.room(), cap.hit
    (False, True)
    """

    max_samples: int = MAX_HELD_SAMPLES
    max_bytes: int = MAX_HELD_BYTES
    samples: int = 0
    nbytes: int = 0
    hit: bool = False

    def room(self) -> bool:
        if self.samples >= self.max_samples or self.nbytes >= self.max_bytes:
            self.hit = True
        return not self.hit

    def add(self, samples: int, nbytes: int) -> None:
        self.samples += samples
        self.nbytes += nbytes

    def record(self) -> dict | None:
        """What was held and the limits, for a search record; None where the cap was not reached."""
        if not self.hit:
            return None
        return {"held_samples": self.samples, "held_mb": round(self.nbytes / 2**20, 1),
                "max_samples": self.max_samples, "max_mb": round(self.max_bytes / 2**20, 1)}

    def message(self, what: str) -> str:
        return (f"{what}: kept the first {self.samples} samples ({self.nbytes / 2**20:.0f} MB) in memory and left "
                f"the rest unread: an evaluation holds at most {self.max_samples} samples or "
                f"{self.max_bytes / 2**20:.0f} MB. Scores are measured on those samples only.")
