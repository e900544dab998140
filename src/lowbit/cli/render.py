"""Terminal rendering for the CLI: rich tables, progress bars and error paragraphs."""

from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# a real terminal sets its own width; piped or redirected output gets room for the wide tables
from lowbit.calibration import CALIBRATIONS
from lowbit.metrics import METRICS
from lowbit.presets import PRESETS

console = Console(stderr=False, width=None if sys.stdout.isatty() else 200)
from lowbit.algorithms import ALGORITHMS

err_console = Console(stderr=True)


@contextmanager
def progress_bar():
    """A progress callback for the library: one bar per stage, shown while that stage runs."""
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def callback(stage: str, done: int, total: int | None = None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield callback


def print_report(report) -> None:
    """The report as rich tables and lines, read through its schema (`lowbit.report.schema`)."""
    typed = report.typed()
    data = typed.extra  # the sections the schema keeps as recorded (tables, search, metric, ...)
    header, rows = report.rows()
    table = Table(title=typed.title, header_style="bold")
    for h in header:  # escaped: '[p10-p90]' and '[0.91-0.96]' are text, not rich markup
        table.add_column(escape(h), justify="left" if h == "variant" else "right")
    for r in rows:
        table.add_row(*[escape(c) for c in r])
    console.print(table)
    skipped = (typed.nodes or {}).get("skipped", [])
    if skipped:
        console.print(f"[dim]{len(skipped)} node(s) kept in float, e.g. "
                      + "; ".join(f"{s['name']} ({s['reason']})" for s in skipped[:3]) + "[/dim]")
    for extra in data.get("tables", []):
        t = Table(title=extra.get("title"), header_style="bold")
        for h in extra["header"]:
            t.add_column(str(h))
        for r in extra["rows"]:
            t.add_row(*[str(c) for c in r])
        console.print(t)
    for note in typed.notes:
        console.print(f"[dim]note: {note}[/dim]")
    search = data.get("search")
    if search:
        chosen = search["chosen"]
        console.print(f"precision search: {search['metric']} floor {search['floor']:.4f}; chosen mix scores "
                      f"{chosen['metric']:.4f} on the search half and {search['holdout']['metric']:.4f} on the held-out "
                      f"half; {len(chosen['promoted'])} layer(s) kept in higher precision; "
                      f"{search['evaluations']} candidates evaluated, {len(search['pareto'])} on the Pareto front"
                      + (f"; {search['backed_off']} refinement(s) undone where the held-out half failed the budget"
                         if search.get("backed_off") else ""))
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


def print_list() -> None:
    t = Table(title="presets")
    t.add_column("name")
    t.add_column("what it does")
    for name, (_, doc) in PRESETS.items():
        t.add_row(name, doc)
    console.print(t)

    for title, reg in (("algorithms", ALGORITHMS), ("metrics", METRICS)):
        t2 = Table(title=title)
        t2.add_column("name")
        t2.add_column("what it does")
        for name, cls in reg.items():
            if hasattr(cls, "definition"):  # a metric: its whole definition, options included
                t2.add_row(name, cls.definition())
            else:
                t2.add_row(name, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "")
        console.print(t2)
    c = Table(title="calibration methods")
    c.add_column("name")
    c.add_column("what it does")
    for name, cls in CALIBRATIONS.items():
        c.add_row(name, (cls.__doc__ or "").strip().splitlines()[0])
    console.print(c)


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
