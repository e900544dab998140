"""Drawing the library's progress callbacks: rich bars in a terminal, plain lines elsewhere.

The library only calls `progress(stage, done, total)` (lowbit.progress); these renderers turn that
into something a person can follow:
- in a terminal, one rich bar per stage: a stage's bar stops (its timer too) when it completes or
  when the next stage starts; a count that goes back (a second pass of the same stage) opens a new
  bar ("gptq (pass 2)") instead of moving the old one backwards; a first bar, always running,
  pulses with the run's elapsed time while a long single step computes;
- piped or redirected, one line when a stage starts and one when it ends, each with the elapsed
  time, and a heartbeat line whenever `heartbeat_s` pass without one (the piped demo was silent for
  7.5 minutes before).
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import IO, Iterator


def _key(stage: str) -> str:
    # 'bias_correction' (the algorithm's name) and 'bias correction' (its progress) are one stage
    return stage.replace("_", " ")


def _count(done: int, total: int | None) -> str:
    """'3/8', '40' (no total known), '' (a step without a count)."""
    return f"{done}/{total}" if total else f"{done}" if done else ""


class StageLines:
    """Progress as lines of text (for logs and pipes): start and end of each stage with elapsed
    time, and a heartbeat line when nothing was printed for `heartbeat_s` seconds."""

    def __init__(self, stream: IO[str] | None = None, heartbeat_s: float = 15.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.heartbeat_s = heartbeat_s
        self.t0 = self.last_line = time.monotonic()
        self.stage: str | None = None
        self.stage_t0 = self.t0
        self.done, self.total, self.passes = 0, None, 1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lowbit-progress", daemon=True)
        self._thread.start()

    def _line(self, text: str) -> None:
        now = time.monotonic()
        self.stream.write(f"[{now - self.t0:7.1f} s] {text}\n")
        self.stream.flush()
        self.last_line = now

    def _end_stage(self) -> None:
        if self.stage is not None:
            count = _count(self.done, self.total)
            self._line(f"{self._name()} done{': ' + count if count else ''} in "
                       f"{time.monotonic() - self.stage_t0:.1f} s")
        self.stage = None

    def _name(self) -> str:
        return self.stage + (f" (pass {self.passes})" if self.passes > 1 else "")

    def __call__(self, stage: str, done: int, total: int | None = None) -> None:
        with self._lock:
            key = _key(stage)
            if key != self.stage:
                self._end_stage()
                self.stage, self.stage_t0, self.passes = key, time.monotonic(), 1
                self.done, self.total = done, total
                self._line(f"{key} ...")
            elif done < self.done:  # a second pass of the same stage
                self._end_stage()
                self.stage, self.stage_t0, self.passes = key, time.monotonic(), self.passes + 1
                self._line(f"{self._name()} ...")
            self.done, self.total = done, total if total is not None else self.total

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.heartbeat_s / 3)):
            with self._lock:
                if time.monotonic() - self.last_line >= self.heartbeat_s:
                    if self.stage is None:
                        self._line("working ...")
                    else:
                        count = _count(self.done, self.total)
                        self._line(f"{self._name()}: {count + ', ' if count else ''}still working, "
                                   f"{time.monotonic() - self.stage_t0:.0f} s in this stage")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._end_stage()


class RichBars:
    """Progress as rich bars on a terminal (see the module docstring for the rules)."""

    def __init__(self, console=None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console or Console(stderr=True), transient=True)
        self.bar.start()
        # always running: its pulse and timer show the run is alive while a stage's count stands still
        self.overall = self.bar.add_task("lowbit", total=None)
        self.current = None  # (key, task id, passes)
        self.done = 0

    def _finish(self) -> None:
        if self.current is not None:
            task = self.current[1]
            t = next(x for x in self.bar.tasks if x.id == task)
            # an unknown total ends at what was done; a known one stays as far as it got
            self.bar.update(task, total=t.total if t.total is not None else max(t.completed, 1),
                            completed=t.completed if t.total is not None else max(t.completed, 1))
            self.bar.stop_task(task)

    def __call__(self, stage: str, done: int, total: int | None = None) -> None:
        key = _key(stage)
        if self.current is None or key != self.current[0] or done < self.done:
            passes = self.current[2] + 1 if self.current is not None and key == self.current[0] else 1
            self._finish()
            label = key + (f" (pass {passes})" if passes > 1 else "")
            self.current = (key, self.bar.add_task(label, total=total), passes)
        self.done = done
        self.bar.update(self.current[1], completed=done, total=total)

    def close(self) -> None:
        self._finish()
        self.bar.stop_task(self.overall)
        self.bar.stop()


def renderer(stream: IO[str] | None = None):
    """Rich bars when `stream` (stderr by default) is a terminal and rich is installed, else lines."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        try:
            from rich.console import Console

            return RichBars(Console(file=stream))
        except ImportError:  # rich is optional for library users
            pass
    return StageLines(stream)


@contextmanager
def live_progress(stream: IO[str] | None = None) -> Iterator:
    """A progress callback drawing to `stream` while the block runs."""
    r = renderer(stream)
    try:
        yield r
    finally:
        r.close()
