"""`lowbit qat`: quantization-aware training of an image classifier, from the command line.

    lowbit qat model.onnx --train train.npz --eval test.npz --weights int4 -o model.qat.onnx
    lowbit qat fp32.pt --arch examples.fashion_mnist.common:SmallCNN --input-shape 1,28,28 \
        --train /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \
        --eval /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz --normalize 0.2860,0.3530 -o cnn.qat.onnx

Data: a folder with one subfolder of images per class (needs --preprocess), an .npz file with
images ('x' / 'images') and labels ('y' / 'labels'), or an idx(.gz) images file beside its labels
file. Parses, calls the API, returns the report: PTQ and QAT side by side against FP32.
"""

from __future__ import annotations

import argparse
import importlib
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

import lowbit
from lowbit.api import QuantResult, VerifyOptions, compare_variants
from lowbit.cli.args import output_file as _output_file
from lowbit.cli.args import positive_int as _positive_int
from lowbit.config import QuantConfig, Scheme
from lowbit.core import PerChannel, dtype_by_name
from lowbit.data import ImagePreprocess, as_feeds
from lowbit.demo.datasets.fashion_mnist import _MAGIC_IMAGES, _MAGIC_LABELS, read_idx
from lowbit.errors import ConfigError, DataError, ModelError
from lowbit.extras import require
from lowbit.io import check_inputs, check_regular_file, read_regular_file, write_all
from lowbit.load.external_data import check_outputs_beside
from lowbit.load.model import export_torch, load_model
from lowbit.load.prepare import prepare
from lowbit.onnx.session import session
from lowbit.report import Report

WEIGHT_BITS = {"int8": None, "int4": "int4"}


def _thread_list(text: str) -> tuple[int, ...]:
    """--threads: comma-separated counts such as 1,2; '' skips latency."""
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes comma-separated integers such as 1,2 (or '' to skip "
                                         f"latency); got '{text}'") from None
    if any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError("thread counts must be at least 1")
    return vals


def add_qat_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `qat` command to the CLI's subparsers."""
    p = subparsers.add_parser("qat", help="quantization-aware training of an image classifier; ships QDQ ONNX")
    p.add_argument("model", help="an .onnx file, or a torch checkpoint (.pt state dict) with --arch")
    p.add_argument("--arch", default=None, help="for checkpoints: the model class as 'package.module:Class'")
    p.add_argument("--input-shape", default=None, help="for checkpoints: one sample's shape, e.g. 1,28,28")
    p.add_argument("--train", required=True, help="training data: class folders, .npz, or idx(.gz) images")
    p.add_argument("--eval", dest="eval_data", required=True, help="held-out labeled data (same forms)")
    p.add_argument("--preprocess", default=None, help="image preprocessing for image folders (see quantize)")
    p.add_argument("--normalize", default=None, help="MEAN,STD applied to array / idx data after uint8 -> [0, 1]")
    p.add_argument("--weights", choices=sorted(WEIGHT_BITS), default="int8", help="weight grid (default int8)")
    p.add_argument("--epochs", type=_positive_int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--calib-n", type=_positive_int, default=512, help="training samples for the initial PTQ plan")
    p.add_argument("--no-learn-scales", action="store_true", help="keep the PTQ step sizes (no LSQ)")
    p.add_argument("--bn", choices=("fold", "batch"), default="fold", help="BatchNorm handling (default fold)")
    p.add_argument("--freeze-bn-after", type=_positive_int, default=None, help="steps of batch statistics (--bn batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, type=_output_file, help="where to write the QAT .onnx")
    p.add_argument("--save-plan", type=_output_file, default=None, help="also write the learned plan as JSON")
    p.add_argument("--threads", type=_thread_list, default=(1, 2),
                   help="thread counts for latency (default 1,2; '' skips)")
    p.add_argument("--latency-runs", type=_positive_int, default=30)
    p.add_argument("--report-html", type=_output_file, default=None)
    p.add_argument("--report-json", type=_output_file, default=None)
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON on stdout (and nothing else there; the summary goes to stderr)")
    return p


def _scale(x: np.ndarray, normalize: str | None) -> np.ndarray:
    x = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)
    if normalize:
        try:
            mean, std = (np.float32(v) for v in normalize.split(","))
        except ValueError:
            raise ConfigError(f"--normalize takes MEAN,STD such as 0.286,0.353; got '{normalize}'") from None
        x = (x - mean) / std
    return x


def load_labeled(path: str, preprocess: Any, normalize: str | None, specs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(inputs float32 (N, ...), labels int64 (N,)) from a class-folder tree, an .npz or an idx file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data not found: {p}")
    if p.is_dir():
        pre = ImagePreprocess.parse(preprocess) if preprocess else None
        xs, ys = [], []
        for b in as_feeds(str(p), specs, preprocess=pre, batch_size=256):
            if b.labels is None:
                raise DataError(f"{p}: no labels; give one subfolder per class.")
            xs.append(next(iter(b.feeds.values())))
            ys.append(np.asarray(b.labels))
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)
    if p.suffix == ".npz":
        x, y = _read_npz(p)
    elif "idx3" in p.name:
        x = read_idx(p, _MAGIC_IMAGES)[:, None]
        y = read_idx(p.with_name(p.name.replace("images-idx3", "labels-idx1")), _MAGIC_LABELS)
    else:
        raise DataError(f"{p}: give a folder of class subfolders, an .npz file, or an idx images file.")
    if x.ndim == 0 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{p}: inputs of shape {x.shape} and labels of shape {y.shape}; give N inputs and N labels "
                        "(labels one integer per input).")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{p}: inputs must be numbers and labels integers; got {x.dtype} and {y.dtype}.")
    _check_sample_shape(p, x, specs)
    return _scale(x, normalize), y.astype(np.int64)


def _read_npz(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """The inputs and labels of an .npz file, refused by name when it is not one lowbit can use."""
    check_regular_file(p, "data file", DataError)
    try:
        with np.load(p, allow_pickle=False) as z:
            xk = next((k for k in ("x", "images", "inputs") if k in z), None)
            yk = next((k for k in ("y", "labels", "label") if k in z), None)
            if xk is None or yk is None:
                raise DataError(f"{p} needs arrays 'x' (or 'images') and 'y' (or 'labels'); it has {list(z)}")
            return z[xk], z[yk]
    except DataError:
        raise
    except ValueError as e:  # object arrays (would need pickle, which lowbit never loads), bad headers
        raise DataError(f"{p}: cannot read its arrays ({e}); save plain numeric arrays with np.savez.") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{p} is not a readable .npz file ({type(e).__name__}: {e}); it is truncated or "
                        "corrupt.") from None


def _check_sample_shape(p: Path, x: np.ndarray, specs: Any) -> None:
    """One sample must have the shape the model's input declares (fixed dims only)."""
    shape = specs[0].shape if specs else None
    if shape is None:
        return
    want = tuple(shape[1:])
    if x.ndim - 1 != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, x.shape[1:])):
        raise DataError(f"{p}: samples of shape {tuple(x.shape[1:])}, the model takes {specs[0].describe_shape()} "
                        "(batch axis first).")


def _load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model for lowbit: ONNX path or torch module, the FP32 ONNX reference)."""
    torch = require("torch", "lowbit qat (quantization-aware training)")

    if Path(args.model).suffix == ".onnx":
        return args.model, load_model(args.model).proto
    if not args.arch or not args.input_shape:
        raise ConfigError("a torch checkpoint needs --arch package.module:Class and --input-shape C,H,W")
    mod_name, _, cls_name = args.arch.partition(":")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--arch {args.arch}: cannot import it ({e})") from None

    raw = read_regular_file(args.model, "checkpoint", ModelError)  # no device or FIFO is read
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for non-checkpoints
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{args.model} is not a torch checkpoint loadable with weights_only=True: {first}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{args.model} holds a {type(state).__name__}, not a state dict (name -> tensor).")
    try:
        model = cls()
    except Exception as e:  # the user's class: any error is theirs to see, in one line
        raise ConfigError(f"--arch {args.arch}: {cls_name}() cannot be built without arguments ({e})") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError, ValueError) as e:  # missing / unexpected keys, shape mismatch
        text = " ".join(str(e).split())
        raise ModelError(f"{args.model} does not fit --arch {args.arch}: {text[:600]}") from None
    try:
        shape = tuple(int(s) for s in args.input_shape.split(","))
        if any(d < 1 for d in shape):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--input-shape takes comma-separated positive integers such as 1,28,28; got "
                          f"'{args.input_shape}'") from None
    return model.eval(), export_torch(model, torch.zeros(1, *shape))


def _check_label_range(reference: Any, x: np.ndarray, labels: dict[str, np.ndarray]) -> None:
    """Labels index the model's outputs: one outside [0, classes) would fail deep inside torch's loss."""
    sess = session(load_model(reference).proto)
    classes = int(sess.run(None, {sess.get_inputs()[0].name: x[:1]})[0].shape[-1])
    for flag, y in labels.items():
        bad = y[(y < 0) | (y >= classes)]
        if bad.size:
            raise DataError(f"{flag}: label {int(bad[0])} is outside the model's {classes} classes; labels must be "
                            f"integers from 0 to {classes - 1} ({bad.size} of {y.size} are not).")


def run_qat(args: argparse.Namespace, progress: Any):
    """PTQ and QAT of the model with the same config; returns the report comparing both with FP32."""
    torch = require("torch", "lowbit qat (quantization-aware training)")

    import lowbit.qat as qat_api

    # every output checked before training, and written together only after everything succeeded
    check_outputs_beside({"-o/--output": args.output, "--save-plan": args.save_plan, "--report-html": args.report_html,
                          "--report-json": args.report_json},
                         {"model": args.model, "--train": args.train, "--eval": args.eval_data}, [args.model])
    check_inputs({"--train": args.train, "--eval": args.eval_data}, DataError)
    torch.manual_seed(args.seed)
    model, reference = _load_model(args)
    specs = prepare(load_model(reference)).inputs
    x_train, y_train = load_labeled(args.train, args.preprocess, args.normalize, specs)
    x_eval, y_eval = load_labeled(args.eval_data, args.preprocess, args.normalize, specs)
    _check_label_range(reference, x_train, {"--train": y_train, "--eval": y_eval})
    config = QuantConfig()
    if WEIGHT_BITS[args.weights]:
        config = config.with_(weights=Scheme(dtype_by_name(WEIGHT_BITS[args.weights]), PerChannel(0), symmetric=True))
    calib = x_train[np.random.default_rng(args.seed).permutation(len(x_train))[:args.calib_n]]
    ptq = lowbit.quantize(reference, config, calib, verify=None, progress=progress)
    qat = qat_api.prepare(model, config, calib, learn_scales=not args.no_learn_scales, bn=args.bn,
                          freeze_bn_after=args.freeze_bn_after, progress=progress)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x_train),
                                                                       torch.from_numpy(y_train)),
                                        batch_size=args.batch_size, shuffle=True,
                                        generator=torch.Generator().manual_seed(args.seed))
    fit = qat_api.fit(qat, train, epochs=args.epochs, lr=args.lr, progress=progress)
    shipped = qat_api.export(qat, torch.from_numpy(x_eval[:512]))
    fq_acc = qat_api.evaluate(qat, [(torch.from_numpy(x_eval[i:i + 1000]), torch.from_numpy(y_eval[i:i + 1000]))
                                    for i in range(0, len(x_eval), 1000)])
    name = f"qat-w{args.weights[3:]}a8"
    results = {f"ptq-w{args.weights[3:]}a8": ptq,
               name: QuantResult(shipped.model, shipped.plan, Report({}), args.output, {}, shipped.float_model)}
    report = compare_variants(reference, results, x_eval[:512], labeled=(x_eval, y_eval),
                              verify=VerifyOptions(threads=args.threads, latency_runs=args.latency_runs),
                              progress=progress, title=f"lowbit qat: {Path(args.model).stem}")
    report.data["output_path"] = str(args.output)
    report.data["qat"] = {"history": fit.history, "fake_quant_accuracy": fq_acc, "export_parity": shipped.parity,
                          "epochs": args.epochs, "lr": args.lr, "learn_scales": not args.no_learn_scales,
                          "bn": args.bn}
    report.data["notes"].append(f"QAT: {args.epochs} epoch(s) at lr {args.lr}; fake-quant module accuracy "
                                f"{fq_acc:.2f}%, exported model's output within "
                                f"{max((p['max_steps'] for p in shipped.parity.values()), default=0):.2f} "
                                "output steps of it.")
    outputs = [(args.output, lambda: shipped.model.SerializeToString()),
               (args.save_plan, lambda: shipped.plan.to_json().encode()),
               (args.report_html, lambda: report.to_html().encode()), (args.report_json, lambda: report.to_json().encode())]
    write_all([(path, data()) for path, data in outputs if path is not None])
    return report
