"""Progress as users see it: lines with elapsed time and a heartbeat when piped, bars that stop and
never count backwards in a terminal, progress=True in the API, -v / -q / --json on every command."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from lowbit.cli.commands import build_parser, main
from lowbit.errors import ConfigError
from lowbit.progress.render import RichBars, StageLines


def test_stage_lines_time_each_stage_and_beat_while_a_step_runs():
    out = io.StringIO()
    p = StageLines(out, heartbeat_s=0.3)
    for i in range(3):
        p("calibrate", i + 1, None)
    time.sleep(1.0)  # one long step: the heartbeat speaks
    p("gptq", 1, 2)
    p("gptq", 2, 2)
    p("gptq", 1, 2)  # a second pass: a new stage line, never 1/2 after 2/2
    p.close()
    lines = out.getvalue().splitlines()
    assert all(re.match(r"\[\s*\d+\.\d s\] ", line) for line in lines), lines
    text = "\n".join(lines)
    assert "calibrate done: 3 in" in text
    assert "still working" in text
    assert "gptq done: 2/2 in" in text and "gptq (pass 2) ..." in text


def test_rich_bars_stop_finished_stages_and_open_a_new_bar_for_a_second_pass():
    from rich.console import Console

    bars = RichBars(Console(file=io.StringIO(), force_terminal=True))
    bars("calibrate", 40, None)
    bars("gptq", 30, 30)
    bars("gptq", 25, 30)
    tasks = {t.description: t for t in bars.bar.tasks}
    bars.close()
    assert tasks["calibrate"].finished and tasks["calibrate"].total == 40  # no '40/?' with a running timer
    assert tasks["gptq"].completed == 30 and tasks["gptq"].finished
    assert tasks["gptq (pass 2)"].completed == 25


def test_api_progress_true_draws_on_stderr(small_model_path, calib_arrays, capfd):
    import lowbit

    lowbit.quantize(small_model_path, "int8-fast", calib_arrays, verify=None, progress=True)
    err = capfd.readouterr().err  # not a terminal here: stage lines
    assert "calibrate done: 24 in" in err
    with pytest.raises(ConfigError, match="progress must be"):
        lowbit.quantize(small_model_path, "int8-fast", calib_arrays, verify=None, progress="yes")


def test_verbose_and_quiet_before_or_after_every_command():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) >= {"quantize", "eval", "analyze", "demo", "bench", "qat", "list"}
    for name, sub in commands.items():
        assert {"-v", "--verbose", "-q", "--quiet"} <= set(sub._option_string_actions), name
    for argv in (["-v", "list"], ["list", "-v"], ["-q", "demo"], ["demo", "--quiet"]):
        args = parser.parse_args(argv)
        assert args.verbose or args.quiet, argv
    assert parser.parse_args(["-v", "list"]).verbose and not parser.parse_args(["list"]).verbose


def test_json_on_stdout_alone_and_no_empty_table(small_model_path, calib_arrays, tmp_path):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.stack(calib_arrays))
    cmd = [sys.executable, "-m", "lowbit.cli", "quantize", str(small_model_path), "--preset", "int8-fast",
           "--calib", str(calib), "-o", str(tmp_path / "m.onnx"), "--threads", "1", "--latency-runs", "3"]
    run = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)  # stdout is the JSON and nothing else
    assert report["variants"][1]["label"] == "int8"
    assert "calibrate done" in run.stderr and "wrote" in run.stderr
    table_lines = [line for line in run.stderr.splitlines() if "┃" in line or "│" in line]
    assert table_lines and max(len(line) for line in table_lines) <= 100
    quiet = subprocess.run([*cmd, "--no-verify", "-o", str(tmp_path / "n.onnx")], capture_output=True, text=True,
                           timeout=300)
    assert quiet.returncode == 0 and "┏" not in quiet.stdout  # nothing measured: no empty table
    assert "wrote" in quiet.stdout


def test_quiet_prints_only_the_verdict(small_model_path, calib_arrays, tmp_path, capsys):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.stack(calib_arrays))
    assert main(["quantize", str(small_model_path), "--preset", "int8-fast", "--calib", str(calib), "-q",
                 "-o", str(tmp_path / "m.onnx"), "--threads", "1", "--latency-runs", "3"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "calibrate" not in err
    assert len(err.strip().splitlines()) == 1 and "int8" in err


@pytest.mark.slow
def test_piped_demo_prints_a_progress_line_at_least_every_30_s(tmp_path):
    """The issue's bar: the piped demo was silent for 7.5 minutes. Read the pipe as it comes, stamp
    each line, and bound the longest silence (from the start to the last line)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "lowbit.cli", "demo", "--out", str(tmp_path / "demo"),
                             "--calib-n", "8", "--eval-n", "8", "--latency-runs", "1", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    stamps = []
    for line in proc.stdout:  # type: ignore[union-attr]
        stamps.append((time.monotonic() - start, line.rstrip()))
    assert proc.wait(timeout=600) == 0, stamps[-5:]
    gaps = np.diff([0.0] + [t for t, _ in stamps])
    worst = int(np.argmax(gaps))
    assert gaps[worst] <= 30.0, f"{gaps[worst]:.0f} s of silence before: {stamps[worst][1]}"
    assert any("calibrate done" in text for _, text in stamps)
