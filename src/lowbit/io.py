"""Safe file writes and reads: a reader sees the old file or the complete new one, never half of one,
and lowbit never replaces what is not its to replace (an input, a device, a symlink, a folder).

Rules, for every output lowbit writes:
- the path is checked before any work starts (`check_outputs`): parent folder exists and is
  writable, not a folder, not a device / FIFO / socket, distinct from every other output and from
  every input (same resolved path or same inode counts as the same file);
- a symlink is written through: the file it points to is replaced atomically, the link stays; a
  dangling symlink is refused (lowbit would create a file somewhere the user did not name);
- a new file gets the mode the umask gives (0644 under the usual 022); a replaced file keeps its
  own mode, so a file a user made private stays private;
- `write_all` writes every output of a run to temp files first and renames them only when all are
  complete: a failure leaves every earlier output byte-identical.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lowbit.errors import LowbitError, OutputError

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _link_hops(p: Path) -> list[Path]:
    """The paths a chain of symlinks at `p` passes through, `p` first."""
    hops = [Path(os.path.abspath(p))]
    while hops[-1].is_symlink() and len(hops) < 40:
        hops.append(Path(os.path.abspath(hops[-1].parent / os.readlink(hops[-1]))))
    return hops


def _target(p: Path) -> Path:
    """Where bytes written to `p` should land: `p` itself, or the file a symlink at `p` names."""
    if not p.is_symlink():
        return p
    # /dev/stdout, /proc/self/fd/N: links that name whatever the writing process holds open (a terminal,
    # a pipe, the file its output is redirected to), not a file the user chose
    hops = _link_hops(p)
    if any(h.parts[1:2] in (("proc",), ("dev",)) for h in hops):
        raise OutputError(f"cannot write {p}: it is a symlink into /proc or /dev ({' -> '.join(map(str, hops))}), "
                          "which names a device or a process's open file, not a file lowbit may replace. Give a "
                          "regular file path.")
    target = p.resolve()  # non-strict: a dangling link resolves to where its target would be
    if not target.exists():
        raise OutputError(f"cannot write {p}: it is a symlink to {target}, which does not exist. lowbit writes "
                          "through symlinks only to existing files; give the target path itself or remove the link.")
    return target


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """Fail early, before hours of work, if `path` cannot be written; returns where the bytes will go
    (the path itself, or the existing file a symlink at it points to)."""
    p = Path(path)
    if str(p) in ("", "."):
        raise OutputError(f"{what}: empty path; give a file name.")
    if str(path).endswith(("/", os.sep)):  # Path() drops the slash that says the user meant a folder
        raise OutputError(f"{what} {path} names a folder; give a file name such as {p / 'model.onnx'}.")
    try:
        target = _target(p)
        st = os.stat(target) if target.exists() else None
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write {what} {p}: {e.strerror or e}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {what} {p}: it is a folder; give a file name such as {p / 'model.onnx'}.")
    if st is not None and not stat.S_ISREG(st.st_mode):
        via = f" (through the symlink {p})" if target != p else ""
        raise OutputError(f"cannot write {what} {target}{via}: it is {_kind(st.st_mode)}, not a regular file. lowbit "
                          "writes only regular files and never replaces a device or pipe; give a file path.")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"cannot write {what} {p}: the folder {parent} does not exist. Create it first or "
                          "choose another output path.")
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {p}: {parent} is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {p}: no permission to write in {parent}.")
    return target


def _identity(p: Path) -> tuple[Path, tuple[int, int] | None]:
    """(resolved path, (device, inode) when it exists): two paths naming one file share either."""
    try:
        st = os.stat(p)
        ino = (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        ino = None
    return Path(os.path.abspath(p)).resolve(), ino


def _as_path(x: Any) -> Path | None:
    if isinstance(x, (str, os.PathLike)) and str(x):
        try:
            return Path(x)
        except (TypeError, ValueError):
            return None
    return None


def check_outputs(outputs: Mapping[str, Any], inputs: Mapping[str, Any] = {}) -> dict[str, Path]:
    """Check a run's outputs together, before any work: each writable (`check_output_path`), no two
    the same file, none the same file as an input (a model's external-data files too:
    `lowbit.load.external_data.check_outputs_beside`). `outputs` / `inputs` map a label ('-o',
    '--calib', ...) to a path (inputs: or a list of paths); None and non-path values (arrays,
    ModelProtos) are skipped. Returns {label: where its bytes go}."""
    targets = {label: check_output_path(p, label) for label, p in outputs.items() if _as_path(p) is not None}
    seen: dict[Any, str] = {}
    for label, t in targets.items():
        path, ino = _identity(t)
        for key in (path, ino):
            if key is not None and key in seen:
                raise OutputError(f"{label} and {seen[key]} name the same file ({outputs[label]}); give each output "
                                  "its own path.")
        seen[path] = label
        if ino is not None:
            seen[ino] = label
    for in_label, x in inputs.items():
        xs = x if isinstance(x, (list, tuple)) else [x]
        for item in xs:
            p = _as_path(item)
            if p is None or not p.exists():
                continue
            in_path, in_ino = _identity(p)
            for label, t in targets.items():
                out_path, out_ino = _identity(t)
                if out_path == in_path or (in_ino is not None and out_ino == in_ino):
                    raise OutputError(f"{label} {outputs[label]} is the input {in_label} ({item}): lowbit never "
                                      "overwrites an input. Write the output to another path.")
    return targets


def check_regular_file(path: str | Path, what: str, error: type[LowbitError]) -> int:
    """The size of `path`, after refusing (without opening it) anything that is not a regular file."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{what} not found: {p}") from None
    except (OSError, ValueError) as e:
        raise error(f"cannot read {what} {p}: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {p} is a folder; give the path of a file.")
    if not stat.S_ISREG(st.st_mode):
        via = f" (it is a symlink to {p.resolve()})" if p.is_symlink() else ""
        raise error(f"{what} {p} is {_kind(st.st_mode)}{via}, not a regular file; give the path of a file.")
    return st.st_size


def check_inputs(inputs: Mapping[str, Any], error: type[LowbitError]) -> None:
    """Input paths (label -> path, list of paths, or a non-path value, skipped) must be regular files
    or folders: a device, FIFO or socket is refused before anything opens it (reading /dev/zero
    never ends; opening a FIFO without a writer blocks forever)."""
    for label, x in inputs.items():
        for item in (x if isinstance(x, (list, tuple)) else [x]):
            p = _as_path(item)
            if p is None or not p.exists() or p.is_dir():
                continue  # a missing file is reported, by name, by whatever reads it
            check_regular_file(p, label, error)


def read_regular_file(path: str | Path, what: str, error: type[LowbitError], max_bytes: int | None = None) -> bytes:
    """The bytes of `path`, refusing before reading anything that is not a regular file (a device,
    FIFO, or a symlink to /dev/zero would be read forever) or is larger than `max_bytes`."""
    p = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO without a writer would otherwise hang before fstat can refuse it
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{what} not found: {p}") from None
    except (OSError, ValueError) as e:
        raise error(f"cannot read {what} {p}: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):  # before fdopen, which raises IsADirectoryError on a folder
        os.close(fd)
        raise error(f"{what} {p} is a folder; give the path of a file.")
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            via = f" (it is a symlink to {p.resolve()})" if p.is_symlink() else ""
            raise error(f"{what} {p} is {_kind(st.st_mode)}{via}, not a regular file; give the path of a file.")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{what} {p} is {st.st_size / 2**30:.1f} GiB, over the {max_bytes / 2**30:.1f} GiB lowbit "
                        "reads into memory.")
        try:
            return f.read()
        except OSError as e:
            raise error(f"cannot read {what} {p}: {e.strerror or e}") from None


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


def _umask() -> int:
    try:  # Linux reports it without changing it (os.umask would, briefly, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(target: Path) -> int:
    """A replaced file keeps its mode; a new one gets what open() would give it under the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _write_temp(target: Path, data: bytes) -> str:
    remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(target)}{os.getpid()}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _mode_for(target))
            os.fsync(f.fileno())
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def write_all(items: Iterable[tuple[str | Path, bytes]]) -> list[Path]:
    """Write several outputs as one step: each to a temp file beside it (fsynced), and only when all
    are complete, each renamed over its path. A failure (disk full, Ctrl-C) removes the temp files
    and leaves every existing output as it was. Returns the paths written (symlinks resolved)."""
    items = list(items)
    targets = [check_output_path(p) for p, _ in items]
    temps: list[str] = []
    try:
        for t, (_, data) in zip(targets, items):
            temps.append(_write_temp(t, data))
        for t, tmp in zip(targets, temps):
            os.replace(tmp, t)
    except BaseException as e:  # KeyboardInterrupt too: never leave a temp file behind
        for tmp in temps:
            _unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"cannot write {e.filename or ', '.join(str(p) for p, _ in items)}: "
                              f"{e.strerror or e}") from None
        raise
    return targets


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync, then rename over `path`: a reader sees
    the previous file or the complete new one. Ctrl-C removes the temp file; a harder kill
    leaves it for the next write beside the same path to remove. A symlink at `path` is written
    through (its target is replaced); a device, FIFO or folder is refused."""
    return write_all([(path, data)])[0]


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
