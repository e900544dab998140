"""Shared checks for the red-team tests: run the real `lowbit` command as a user would, then prove
that nothing was lost (inputs and earlier outputs byte-identical, modes kept), no traceback was
printed, no temp file was left, and memory stayed bounded."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TRACEBACK = "Traceback (most recent call last)"


@dataclass
class CliRun:
    rc: int
    stdout: str
    stderr: str
    peak_rss_mb: float

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


# Runs the CLI and then reports the process's own peak RSS (VmHWM). Linux keeps a forked child's
# ru_maxrss from before exec, so the parent's rusage would report pytest's peak, not the CLI's.
_RUN_AND_REPORT_PEAK = """
import os, sys
from lowbit.cli.commands import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
finally:
    with open(os.environ["LOWBIT_TEST_PEAK_FILE"], "w") as f:
        f.write(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
sys.exit(rc)
"""


def run_cli(*args: str | os.PathLike, cwd: Path | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> CliRun:
    """`lowbit ARGS` (lowbit.cli.commands.main) in a fresh process; peak RSS is that process's own VmHWM."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        peak_file = Path(d) / "peak_kb"
        extra = dict(env or {})
        if "PYTHONPATH" in extra and os.environ.get("PYTHONPATH"):  # keep finding the lowbit under test
            extra["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
        e = dict(os.environ, COLUMNS="200", LOWBIT_TEST_PEAK_FILE=str(peak_file), **extra)
        p = subprocess.run([sys.executable, "-c", _RUN_AND_REPORT_PEAK, *map(str, args)], cwd=cwd, env=e,
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        peak_kb = float(peak_file.read_text()) if peak_file.is_file() else float("nan")
    return CliRun(p.returncode, p.stdout, p.stderr, peak_kb / 1024)


def assert_clean_failure(run: CliRun, pattern: str | None = None, rc: int = 2) -> None:
    """Exit code `rc`, one clear message (matching `pattern` when given), never a traceback."""
    import re

    assert TRACEBACK not in run.text, run.text[-3000:]
    assert run.rc == rc, f"exit {run.rc}, wanted {rc}:\n{run.text[-3000:]}"
    if pattern is not None:
        assert re.search(pattern, run.text, re.I | re.S), f"no /{pattern}/ in:\n{run.text[-3000:]}"


@dataclass(frozen=True)
class FileState:
    kind: str  # 'file', 'link', 'char', 'block', 'fifo', 'dir', 'missing'
    mode: int | None
    content: bytes | str | None  # bytes of a regular file, target of a link


def file_state(p: Path) -> FileState:
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return FileState("missing", None, None)
    m = st.st_mode
    if stat.S_ISLNK(m):
        return FileState("link", stat.S_IMODE(m), os.readlink(p))
    if stat.S_ISREG(m):
        return FileState("file", stat.S_IMODE(m), p.read_bytes())
    kind = "char" if stat.S_ISCHR(m) else "block" if stat.S_ISBLK(m) else "fifo" if stat.S_ISFIFO(m) else "dir"
    return FileState(kind, stat.S_IMODE(m), None)


def snapshot(*paths: Path) -> dict[Path, FileState]:
    """The state of every path given (folders: every entry below them, links not followed)."""
    out: dict[Path, FileState] = {}
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            for q in sorted(p.rglob("*")):
                out[q] = file_state(q)
        else:
            out[p] = file_state(p)
    return out


def assert_unchanged(before: dict[Path, FileState]) -> None:
    for p, s in before.items():
        now = file_state(p)
        assert now == s, f"{p} changed: {s.kind}/{s.mode} -> {now.kind}/{now.mode}"


def temp_files(folder: Path) -> list[Path]:
    """What an interrupted or failed lowbit would leave: its `.NAME.lowbit-PID.*.tmp` files."""
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".lowbit-" in p.name]
