"""Progress reporting: the library calls a callback; it never prints on its own.

Every long-running function takes `progress`: a callable(stage, done, total) that the library calls
as work advances (`total` None where it is not known in advance), `True` to draw it on stderr (rich
bars in a terminal, one line per stage with elapsed time elsewhere: lowbit.progress.render), or
False / None for nothing.

>>> lowbit.quantize("model.onnx", "int8", "calib/", progress=True)   # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol, TypeVar

from lowbit.errors import ConfigError
from lowbit.progress.render import live_progress


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int | None = None) -> None: ...


def null_progress(stage: str, done: int, total: int | None = None) -> None:
    """The default: report nothing."""


F = TypeVar("F", bound=Callable)


def accepts_progress(fn: F) -> F:
    """Lets `fn`'s `progress` keyword be True (draw on stderr while `fn` runs), False / None
    (nothing) or a callback, which `fn` itself always receives."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        p = kwargs.get("progress")
        if p is True:
            with live_progress() as drawn:
                kwargs["progress"] = drawn
                return fn(*args, **kwargs)
        if p is None or p is False:
            kwargs["progress"] = null_progress
        elif "progress" in kwargs and not callable(p):
            raise ConfigError(f"progress must be True, False or a callable(stage, done, total); got {p!r}.")
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
