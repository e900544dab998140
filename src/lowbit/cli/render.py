"""Terminal rendering for the CLI: rich tables, progress bars and error paragraphs."""

from __future__ import annotations

import dataclasses
import re
import sys
import textwrap
import traceback
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# than that wraps them. Piped output gets the same 100, never a cut line.
from lowbit.presets import PRESETS
# Tables are made to fit 100 columns (details are in the HTML / JSON reports); a terminal narrower
from lowbit.progress import null_progress
from lowbit.progress.render import live_progress
from lowbit.target.cpu import TARGETS, target_traits

WIDTH = 100
from lowbit.metrics import METRICS

console = Console(stderr=False, width=None if sys.stdout.isatty() else WIDTH)
from lowbit.calibration import CALIBRATIONS

err_console = Console(stderr=True, width=None if sys.stderr.isatty() else WIDTH)
from lowbit.algorithms import ALGORITHMS

QUIET = False


def configure(json_stdout: bool = False, quiet: bool = False) -> None:
    """--json: stdout holds only the JSON, so the human summary goes to stderr. -q: no progress, no
    tables; errors, warnings and verdict lines only."""
    global console, QUIET
    QUIET = quiet
    if json_stdout:
        console = err_console


def note(text: str) -> None:
    """A plain line of the summary (not shown with -q)."""
    if not QUIET:
        console.print(escape(text), soft_wrap=True, highlight=False)


def print_interrupted() -> None:
    err_console.print("[yellow]interrupted: no partial output was left behind.[/yellow]")


@contextmanager
def progress_bar():
    """A progress callback for the library, drawn on stderr (lowbit.progress.render): rich bars in a
    terminal, one line per stage with elapsed time when piped; nothing with -q."""
    if QUIET:
        yield null_progress
        return

    with live_progress(sys.stderr) as progress:
        yield progress


_SPREAD = re.compile(r" \[[^\]]*\]")  # ' [p10-p90]' in a latency cell or header


def compact_table(report) -> tuple[list[str], list[list[str]]]:
    """The report's summary table within WIDTH columns: size and its share in one cell, latency
    without its spread, then the metrics, accuracy and parity as they fit, in that order (the
    HTML / JSON reports hold them all)."""
    header, rows = report.rows()
    cols = list(range(len(header)))
    merged_h = ["variant", "size MB (% FP32)"]
    merged = [[r[0], f"{r[1]} ({r[2]})" if r[2] != "-" else r[1]] for r in rows]
    keep = []
    for i in cols[3:]:
        h = header[i]
        if h.startswith("energy"):
            continue  # estimated: in the HTML / JSON report
        keep.append(i)
    for i in keep:
        h = _SPREAD.sub("", header[i]).replace(" (speed-up)", "")
        merged_h.append(h)
        for r, out in zip(rows, merged):
            out.append(_SPREAD.sub("", r[i]) if "-thread" in header[i] else r[i])
    # a metric no variant has does not apply to this model (a detector's top-1 accuracy): not shown
    for j in reversed(range(2, len(merged_h))):
        if all(r[j] == "-" for r in merged):
            del merged_h[j]
            for r in merged:
                del r[j]
    # drop whole columns from the right until the table fits (rich adds 3 per column + 1)
    while len(merged_h) > 3:
        widths = [max(len(h), *(len(r[j]) for r in merged)) for j, h in enumerate(merged_h)]
        if sum(widths) + 3 * len(widths) + 1 <= WIDTH:
            break
        drop = max(range(3, len(merged_h)), key=lambda j: (widths[j] > 24, j))
        del merged_h[drop]
        for r in merged:
            del r[drop]
    return merged_h, merged


def print_report(report) -> None:
    """The report as rich tables and lines, read through its schema (`lowbit.report.schema`)."""
    if QUIET:
        for v in report.verdicts():
            err_console.print(escape(v["text"]), soft_wrap=True, highlight=False)
        return
    typed = report.typed()
    data = typed.extra  # the sections the schema keeps as recorded (tables, search, metric, ...)
    if typed.variants:  # --no-verify measures nothing: no empty table
        header, rows = compact_table(report)
        table = Table(title=escape(typed.title), header_style="bold")
        for h in header:  # escaped: '[0.91-0.96]' is text, not rich markup
            table.add_column(escape(h), justify="left" if h == "variant" else "right")
        for r in rows:
            table.add_row(*[escape(c) for c in r])
        console.print(table)
    else:
        console.print(escape(typed.title), highlight=False)
    skipped = (typed.nodes or {}).get("skipped", [])
    if skipped:
        console.print(f"[dim]{len(skipped)} node(s) kept in float, e.g. "
                      + escape("; ".join(f"{s['name']} ({s['reason']})" for s in skipped[:3])) + "[/dim]")
    for extra in data.get("tables", []):
        t = Table(title=escape(str(extra.get("title") or "")), header_style="bold")
        for h in extra["header"]:
            t.add_column(escape(str(h)), overflow="fold")
        for r in extra["rows"]:
            t.add_row(*[escape(str(c)) for c in r])
        console.print(t)
    for n in typed.notes:
        console.print(f"[dim]note: {escape(n)}[/dim]")
    search = data.get("search")
    if search:
        chosen = search["chosen"]
        console.print(f"precision search: {search['metric']} floor {search['floor']:.4f}; chosen mix scores "
                      f"{chosen['metric']:.4f} on the search half and {search['holdout']['metric']:.4f} on the held-out "
                      f"half; {len(chosen['promoted'])} layer(s) kept in higher precision; "
                      f"{search['evaluations']} candidates evaluated, {len(search['pareto'])} on the Pareto front"
                      + (f"; {search['backed_off']} refinement(s) undone where the held-out half failed the budget"
                         if search.get("backed_off") else ""))
        mixes = search.get("recovered_mixes") or {}
        if mixes.get("tries"):
            tried = ", ".join(f"{t['float_layers']}: {t['metric']:.4f}" for t in mixes["tries"])
            shipped = mixes.get("shipped_float_layers")
            console.print(f"recovered mixes (float layers of the search's {mixes['search_float_layers']}: search-half "
                          f"{search['metric']}): {tried}; "
                          + (f"shipped the one with {shipped}" if shipped is not None
                             else "none held on both halves, the search's mix ships as it was"))
        if search.get("warning"):
            console.print(f"[yellow]warning: {search['warning']}[/yellow]")
    metric = data.get("metric")
    if metric:
        how = {"given": "given", "inferred": "inferred", "generic": "generic"}.get(metric.get("source"), "")
        console.print(f"[dim]headline metric {metric['headline']} ({how}: {escape(metric.get('reason') or '-')}): "
                      f"{escape(metric.get('definition') or '')}[/dim]")
    if data.get("energy_assumptions"):
        console.print("[dim]energy uJ (est.): " + escape(" ".join(data["energy_assumptions"])) + "[/dim]")
    if typed.output_path:
        console.print(f"wrote {typed.output_path}")
    for v in report.verdicts():
        style = {"OK": "green", "LOW": "yellow"}.get(v["status"], "bold red")
        console.print(f"[{style}]{escape(v['text'])}[/{style}]", soft_wrap=True)


def print_error(e: Exception) -> None:
    """One paragraph, no traceback, no box characters (so it copies and greps cleanly)."""
    text = str(e).strip()
    if isinstance(e, MemoryError):
        text = "ran out of memory" + (f" ({text})" if text else "") + "; use fewer or smaller inputs, or a " \
               "machine with more memory."
    err_console.print(f"[bold red]lowbit error[/bold red] ({type(e).__name__}): {escape(text or type(e).__name__)}",
                      soft_wrap=True)


BUG_REPORT_HINT = ("This is a bug in lowbit, not in your input: please report it with the command you ran and the "
                   "output of the same command with -v, which prints the traceback.")


def print_internal_error(e: BaseException, verbose: bool) -> None:
    """An unexpected error: one paragraph with a bug-report hint; the traceback only with -v."""
    if verbose:
        err_console.print(escape("".join(traceback.format_exception(e))), soft_wrap=True, highlight=False)
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    err_console.print(f"[bold red]lowbit internal error[/bold red] ({type(e).__name__}): {escape(first)}. "
                      + (BUG_REPORT_HINT if not verbose else BUG_REPORT_HINT.split(":")[0] + "; please report it "
                         "with the command you ran and the traceback above."), soft_wrap=True)


def _summary(doc: str | None, limit: int = 260) -> str:
    """The first sentences of a docstring's first paragraph (whole sentences, about `limit` chars)."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    out = ""
    for sentence in re.split(r"(?<=\.)\s+(?=[A-Z`(])", para):
        if out and len(out) + len(sentence) > limit:
            break
        out = f"{out} {sentence}".strip()
    return out


def _options(cls) -> str:
    fields = [f for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING]
    return ", ".join(f"{f.name}={f.default!r}".replace("'", "") for f in fields)


def list_text(width: int = WIDTH) -> str:
    """`lowbit list`: every preset, calibration method, algorithm, target and metric, each with the
    flag and the config-file key that select it. Plain text (no markup to lose, nothing cut)."""
    lines: list[str] = []

    def section(title: str, how: str) -> None:
        lines.extend(["", title.upper(), *textwrap.wrap(how, width, initial_indent="  ", subsequent_indent="  ")])

    def entry(name: str, select: str, text: str) -> None:
        lines.append(f"  {name:<22} {select}")
        lines.extend(textwrap.wrap(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6))

    section("presets", "quantize --preset NAME; in a --config file: preset = \"NAME\". "
                       "quantize --print-config --preset NAME prints a preset's whole config.")
    for name, (_, doc) in PRESETS.items():
        entry(name, f"--preset {name}", doc)
    section("calibration methods", "how activation ranges are chosen. quantize --calibration NAME[:VALUE] (VALUE "
                                   "sets the first option; NAME:key=value,... several); in a --config file: "
                                   "[activations] calibration = { name = \"NAME\", ... }.")
    for name, cls in CALIBRATIONS.items():
        opts = _options(cls)
        entry(name, f"--calibration {name}" + (f"   options: {opts}" if opts else ""), _summary(cls.__doc__))
    section("algorithms", "quantize --algorithms A,B,... (replaces the preset's list; keep-if-better:ALG wraps "
                          "one); in a --config file: one [[algorithms]] table each, name = \"NAME\" and its "
                          "options. 'float' ones run before calibration, 'plan' ones after.")
    for name, cls in ALGORITHMS.items():
        select = f"--algorithms {name}:gptq" if name == "keep-if-better" else f"--algorithms {name}"
        opts = _options(cls)
        entry(name, f"{select}   ({cls.stage} stage)", _summary(cls.__doc__)
              + (f" Options: {opts}." if opts else ""))
    section("targets", "the CPU the weight grids are planned for. quantize --target NAME; in a --config "
                       "file: target = \"NAME\".")
    for name in TARGETS:
        what = "this machine: " + target_traits("auto").describe() if name == "auto" else target_traits(name).describe()
        entry(name, f"--target {name}", what)
    section("objectives", "what the INT8 plan and the precision search minimise. quantize --objective NAME; "
                          "in a --config file: objective = \"NAME\".")
    entry("latency", "--objective latency", "Layers measured slower in INT8 than FP32 on this CPU stay FP32 (the "
                                           "default).")
    entry("size", "--objective size", "Every layer that can be INT8 is, however slow.")
    section("metrics", "the report's headline and the accuracy budget's measure. quantize / eval --metric "
                       "NAME[:key=value,...], analyze --metric NAME; in a --config file: metric = \"NAME\".")
    for name, cls in METRICS.items():
        text = cls.definition() if hasattr(cls, "definition") else _summary(cls.__doc__)
        entry(name, f"--metric {name}", text)
    return "\n".join(lines[1:]) + "\n"


def print_list() -> None:
    sys.stdout.write(list_text())


def print_speed_prediction(p: dict) -> None:
    t = Table(title=f"predicted speed of {p['model']} at {p['threads']} thread(s), measured per layer")
    for h in ("layer", "op", "FP32 ms", "INT8 ms", "FP16 ms", "INT8 speed-up", "lowbit picks"):
        t.add_column(h, justify="left" if h in ("layer", "op", "lowbit picks") else "right")
    for l in p["layers"]:
        style = "red" if l["choice"] == "fp32" else ""
        t.add_row(l["node"], l["op"], f"{l['fp32_ms']:.3f}", f"{l['int8_ms']:.3f}", f"{l['fp16_ms']:.3f}",
                  f"{l['int8_speedup']:.2f}x", l["choice"], style=style)
    console.print(t)
    tot = p["total"]
    console.print(f"total FP32 {tot['fp32_ms']:.2f} ms; all-INT8 {tot['int8_ms']:.2f} ms ({tot['int8_speedup']:.2f}x); "
                  f"lowbit's latency plan {tot['int8_latency_plan_ms']:.2f} ms ({tot['int8_latency_plan_speedup']:.2f}x); "
                  f"FP16 {tot['fp16_ms']:.2f} ms ({tot['fp16_speedup']:.2f}x)")
    console.print(f"[dim]{p['note']}[/dim]")
