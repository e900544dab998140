"""The zoo's results as one matrix (model x preset), written into benchmarks/README.md between markers.

    python -m benchmarks.zoo.summary        # reads benchmarks/zoo/results.json

Each cell: the task metric vs FP32 / size in % of FP32 / 1-thread speed-up ('(slower)' where its 95%
interval lies wholly below 1); 'refused' where lowbit exited 2 with its reason (see results.md),
'error' where a peer failed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.zoo.models import ZOO
from benchmarks.zoo.run import PEERS, PRESETS

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"  # benchmarks/README.md


def cell(r: dict | None) -> str:
    if r is None:
        return "—"
    if "metric" in r:  # slower: FP32's speed-up interval wholly below 1 (benchmarks/zoo/run.py)
        return f"{r['metric']:.3f} / {r['size_pct']:.0f}% / {r['speedup']:.2f}x" + (" (slower)" if r.get("slower") else "")
    if r.get("traceback"):
        return "TRACEBACK"
    return "refused" if str(r.get("rc")) == "2" else "error"


def matrix(results: list[dict]) -> str:
    by = {(r["model"], r["config"]): r for r in results}
    configs = [c for c in PRESETS + PEERS if any(k[1] == c for k in by)]
    lines = ["| model (task metric) | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
    for name, entry in ZOO.items():
        if not any(k[0] == name for k in by):
            continue
        lines.append(f"| {name} ({entry.metric}) | " + " | ".join(cell(by.get((name, c))) for c in configs) + " |")
    return "\n".join(lines)


def machines(results: list[dict]) -> list[str]:
    """Each machine of the run once, with the range of the load averages its runs started at."""
    loads: dict[str, list[float]] = {}
    for r in results:
        head, _, load = str(r.get("machine") or "").partition("; load average ")
        if head:
            loads.setdefault(head, []).extend([float(load.split()[0])] if load else [])
    return [f"{h}; load average {min(v):.1f}-{max(v):.1f} at the starts of its runs (shared machine)" if v else h
            for h, v in loads.items()]


def main() -> None:
    results = json.loads((HERE / "results.json").read_text())
    note = "".join(f"\n\nSpeed-ups at 1 thread (CPU time of the thread running the graph) on {m}." for m in machines(results))
    block = ("<!-- zoo:start -->\n" + matrix(results) + note + "\n<!-- zoo:end -->")
    text = README.read_text()
    if "<!-- zoo:start -->" not in text:
        raise SystemExit("benchmarks/README.md has no <!-- zoo:start --> / <!-- zoo:end --> markers")
    README.write_text(re.sub(r"<!-- zoo:start -->.*<!-- zoo:end -->", lambda _: block, text, flags=re.S))
    print(block)


if __name__ == "__main__":
    main()
