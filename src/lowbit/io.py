"""Atomic file writes: a reader sees the old file or the complete new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lowbit.errors import OutputError


def _check_writable_dir(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"cannot write {path}: the folder {parent} does not exist. Create it first or "
                          "choose another output path.")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is not a folder.")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name such as {path / 'model.onnx'}.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: no permission to write in {parent}.")


def check_output_path(path: str | Path) -> Path:
    """Fail early, before hours of work, if `path` cannot be written."""
    p = Path(path)
    _check_writable_dir(p)
    return p


def _temp_prefix(p: Path) -> str:
    return f".{p.name}.lowbit-"


def remove_stale_temps(p: Path) -> None:
    """Remove temp files that a killed lowbit (SIGKILL, power loss) left beside `p`: their
    names carry the writer's PID, and a PID that no longer runs will never finish them."""
    prefix = _temp_prefix(p)
    for stale in p.parent.glob(f"{prefix}*.tmp"):
        try:
            pid = int(stale.name[len(prefix):].split(".", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            stale.unlink()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync, then rename over `path`: a reader sees
    the previous file or the complete new one. Ctrl-C removes the temp file; a harder kill
    leaves it for the next write beside the same path to remove."""
    p = check_output_path(path)
    remove_stale_temps(p)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(p)}{os.getpid()}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:  # KeyboardInterrupt too: never leave the temp file behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {p}: {e.strerror or e}") from None
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
