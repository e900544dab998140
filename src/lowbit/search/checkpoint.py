"""The precision search's checkpoint: scores by plan hash, so an interrupted search resumes.

The file is lowbit's own cache, but it is read back from disk, so it is checked like user input:
a file that is damaged, foreign or of another version is ignored with a warning and rebuilt (its
scores are never trusted half-way), and a file that cannot be written costs the resume, not the run.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from lowbit.errors import DataError, LowbitError
from lowbit.io import atomic_write_text, read_regular_file

log = logging.getLogger(__name__)

SCHEMA = "lowbit.search-checkpoint/1"
# ~110 bytes per evaluation; a search makes tens to hundreds: anything near this is not a checkpoint
MAX_BYTES = 16 << 20
_KEY = re.compile(r"[0-9a-f]{64}")  # sha256 of plan JSON + model key (PlanEvaluator.score)


def _why_bad(scores) -> str | None:
    """Why `scores` is not {sha256 hex: [metric, sqnr_db]}, or None."""
    if not isinstance(scores, dict):
        return "its scores are not an object"
    for k, v in scores.items():
        if not isinstance(k, str) or not _KEY.fullmatch(k):
            return f"entry {str(k)[:70]!r} is not a plan hash"
        if not (isinstance(v, list) and len(v) == 2 and all(type(x) in (int, float) for x in v)):
            return f"entry {k[:12]}... is {str(v)[:40]}, not [metric, sqnr_db]"
        if math.isnan(v[1]):  # metric may be nan (a metric of a broken candidate); SQNR is a number or +inf
            return f"entry {k[:12]}... has SQNR nan"
    return None


def load_checkpoint(path: Path) -> dict[str, list[float]]:
    """The scores saved at `path`; {} when there is no file yet, or (with a warning) when it is not a
    lowbit search checkpoint: the search then starts over and replaces it."""
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        raw = read_regular_file(path, "search checkpoint", DataError, MAX_BYTES)
        d = json.loads(raw)
    except (LowbitError, ValueError, RecursionError) as e:  # unreadable, not JSON, not UTF-8, too deep
        why = str(e) if isinstance(e, LowbitError) else f"it is not JSON ({type(e).__name__})"
        return _ignored(path, why)
    if isinstance(d, dict) and d.get("schema") == SCHEMA:
        scores = d.get("scores")
    elif isinstance(d, dict) and "schema" not in d:
        scores = d  # written before the file had a schema: a bare {hash: [metric, sqnr_db]}
    else:
        return _ignored(path, f"its schema is {str(d.get('schema') if isinstance(d, dict) else type(d).__name__)[:60]!r}, "
                              f"not {SCHEMA!r}")
    why = _why_bad(scores)
    return _ignored(path, why) if why else {k: [float(a), float(b)] for k, (a, b) in scores.items()}


def _ignored(path: Path, why: str) -> dict:
    log.warning("search checkpoint %s ignored: %s. The search starts over and rewrites it.", path, why)
    return {}


def save_checkpoint(path: Path, scores: dict[str, list[float]]) -> bool:
    """Write `scores` atomically; a failure (disk full, a device or folder at `path`) is a warning:
    the search goes on without a resume point. Returns whether it was written."""
    try:
        atomic_write_text(path, json.dumps({"schema": SCHEMA, "scores": scores}))
        return True
    except (LowbitError, OSError) as e:
        log.warning("search checkpoint %s not written (%s); the search goes on without it.", path, e)
        return False
