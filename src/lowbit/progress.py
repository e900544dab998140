"""Progress reporting: the library calls a callback; only the CLI draws progress bars."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int | None = None) -> None: ...


def null_progress(stage: str, done: int, total: int | None = None) -> None:
    """The default: report nothing."""
