"""The layer-cost cache (`~/.cache/lowbit/layer_costs.json`, folder from `LOWBIT_CACHE`).

A file any program can write decides which layers stay float, so it is read back like user input:
a cache that is not exactly what this version writes (truncated, another shape, wrong types, NaN,
negative or absurd times, binary, too big) is ignored with a warning and measured again, never
trusted in part and never a crash. Writing it is best effort: a cache that cannot be written costs
a re-measurement next time, never the run.

Format (version 2): {"format": "lowbit.layer_costs", "version": 2, "entries": {key: {"fp32": [ms,
...], "int8": [...], "fp16": [...]}}}, the per-run times of each form, measured interleaved; their
spread is what the latency choice weighs (lowbit.target.latency_choice).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

from lowbit.io import atomic_write_text

log = logging.getLogger(__name__)

FORMAT = "lowbit.layer_costs"
VERSION = 2
FORMS = ("fp32", "int8", "fp16")
MAX_BYTES = 32 << 20  # ~150k layers: far beyond any honest cache
MAX_ENTRIES = 20_000  # oldest dropped on write beyond this
MAX_RUNS = 1000
MAX_MS = 600_000.0  # one layer taking 10 minutes is not a measurement
KEY = re.compile(r"[0-9a-f]{20}")

Entry = dict[str, list[float]]


def cache_path() -> Path:
    root = Path(os.environ.get("LOWBIT_CACHE") or Path.home() / ".cache" / "lowbit")
    return root / "layer_costs.json"


def _bad_entry(value) -> str | None:
    """Why a cache entry is unusable, or None."""
    if not isinstance(value, dict) or set(value) != set(FORMS):
        return f"entry is not an object with exactly the keys {list(FORMS)}"
    n = None
    for form in FORMS:
        runs = value[form]
        if not isinstance(runs, list) or not 1 <= len(runs) <= MAX_RUNS:
            return f"'{form}' is not a list of 1 to {MAX_RUNS} times"
        for t in runs:
            # bool is an int in Python; a time is a positive finite number of ms
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 < t <= MAX_MS:
                return f"'{form}' holds {t!r}, not a time in ms in (0, {MAX_MS:g}]"
        if n is not None and len(runs) != n:
            return "the forms have different numbers of runs (they are measured interleaved)"
        n = len(runs)
    return None


def _parse(raw: bytes) -> tuple[dict[str, Entry] | None, str]:
    """(entries, '') for a valid cache, else (None, why not)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as e:  # JSONDecodeError, and ints too long to convert
        return None, f"not valid JSON ({str(e)[:80]})"
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__}, not an object"
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        version = data.get("version") if isinstance(data.get("version"), (int, str)) else None
        return None, f"not a version-{VERSION} lowbit layer-cost cache (format {str(data.get('format'))[:40]!r}, " \
                     f"version {str(version)[:20]!r})"
    entries = data.get("entries")
    if not isinstance(entries, dict):
        return None, "'entries' is not an object"
    if len(entries) > MAX_ENTRIES:
        return None, f"{len(entries)} entries, more than this version ever writes ({MAX_ENTRIES})"
    for key, value in entries.items():
        if not KEY.fullmatch(key):
            return None, f"key {key[:40]!r} is not a layer signature"
        why = _bad_entry(value)
        if why:
            return None, f"entry {key}: {why}"
    return {k: {f: [float(t) for t in v[f]] for f in FORMS} for k, v in entries.items()}, ""


def load_cache(path: Path) -> tuple[dict[str, Entry], bool]:
    """(entries, rejected): the cache's entries, or {} when there is none or it cannot be trusted
    (then `rejected` is True and a warning says why; the caller rewrites it)."""
    try:
        if not path.exists():
            return {}, False
        if not path.is_file():
            log.warning("ignoring the layer-cost cache %s: it is not a regular file", path)
            return {}, False  # not ours to replace
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        log.warning("ignoring the layer-cost cache %s: cannot read it (%s); layers are measured again", path, e)
        return {}, False
    if len(raw) > MAX_BYTES:
        why = f"larger than {MAX_BYTES >> 20} MB"
        entries = None
    else:
        entries, why = _parse(raw)
    if entries is None:
        log.warning("ignoring the layer-cost cache %s: %s. It is measured again and rewritten.", path, why)
        return {}, True
    return entries, False


def save_cache(path: Path, entries: dict[str, Entry]) -> None:
    """Write the cache atomically; never raises (a cache is an optimization)."""
    if len(entries) > MAX_ENTRIES:  # insertion order: the oldest first
        entries = dict(list(entries.items())[-MAX_ENTRIES:])
    text = json.dumps({"format": FORMAT, "version": VERSION, "entries": entries}, separators=(",", ":"))
    if path.exists() and not path.is_file():
        return  # something else lives there (load_cache warned): not ours to replace
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except Exception as e:  # any failure to write (read-only home, a file where the folder should be, ...)
        # info, not warning: a read-only home would otherwise warn on every run
        log.info("could not write the layer-cost cache %s (%s): layers will be measured again next time", path, e)
