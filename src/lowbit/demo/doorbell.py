"""`lowbit demo doorbell`: the smart doorbell. A real face descriptor (dlib's ResNet, ported to
torch from face-api's weights) quantized to FP16 and INT8, then judged on held-out faces: every
pair of held-out images decided same / different, and door rings of residents and strangers, each
decision compared with dlib's own FP32 model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lowbit.api import VerifyOptions, compare_variants, quantize
from lowbit.demo.face_pairs import door_rings, pair_decisions, ring_summary
from lowbit.demo.zoo.face_set import VARIANTS, FaceSet, face_set
from lowbit.extras import require
from lowbit.io import write_all
from lowbit.load.model import export_torch
from lowbit.metrics import verification_stats
from lowbit.onnx.session import session
from lowbit.progress import Progress, null_progress
from lowbit.report import Report

THRESHOLD = 0.6  # dlib's same-person distance threshold
# The mixed plan's budget: mean embedding cosine to FP32 at most this far below 1 (the search keeps
# the most sensitive layers in FP16 weights until it holds on half of the calibration faces).
MIXED_MAX_DROP = 0.0003


def _embed(model: bytes, x: np.ndarray) -> np.ndarray:
    return session(model).run(None, {"input": x})[0]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def residents_of(ev: FaceSet) -> list[str]:
    """Who lives in the house: Obama, Biden and every other group-photo identity (in order of
    first appearance); the rest of the held-out people are strangers who ring too."""
    order = list(dict.fromkeys(ev.identity))
    group = [w for w in order if w.startswith("person ")]
    return [w for w in order if not w.startswith("person ")] + group[::2]


def _inputs(fs: FaceSet) -> np.ndarray:
    from lowbit.demo.zoo.faces import chip_to_input

    return np.stack([chip_to_input(c) for c in fs.chips])


def run_doorbell(out: Path, threads: tuple[int, ...] = (1,), latency_runs: int = 30,
                 progress: Progress = null_progress) -> Report:
    torch = require("torch", "the doorbell demo (its face descriptor is a torch module)")

    from lowbit.demo.zoo.face_descriptor import face_descriptor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fp32 = export_torch(face_descriptor(), torch.zeros(1, 3, 150, 150))
    faces = face_set()
    cal, ev = faces.select(~faces.heldout), faces.select(faces.heldout)
    x_cal, x_ev = _inputs(cal), _inputs(ev)
    # calibration and the mixed plan's search see only the calibration identities' images; every
    # figure below is on the held-out identities
    calib = list(x_cal)
    results = {"fp16": quantize(fp32, "fp16", verify=None),
               "int8": quantize(fp32, "int8", calib, verify=None, progress=progress),
               "mixed": quantize(fp32, "int8", calib, verify=None, eval_data=calib, metric="cosine",
                                 max_drop=MIXED_MAX_DROP, search_evals=16, progress=progress)}
    report = compare_variants(fp32, results, list(x_ev), verify=VerifyOptions(threads=threads, latency_runs=latency_runs),
                              progress=progress, title="lowbit demo: the doorbell (dlib ResNet face descriptor)")
    variants = {"dlib FP32 (reference)": None, "fp32 (lowbit port)": fp32.SerializeToString(),
                **{k: r.model.SerializeToString() for k, r in results.items()}}
    names = [f"{f} {v}" for f, v in zip(ev.face, ev.variant)]
    residents = residents_of(ev)
    base_rings = door_rings(ev.dlib, ev.identity, names, residents, THRESHOLD)
    summary, pair_rows, flip_rows, ring_rows = {}, [], [], []
    for label, model in variants.items():
        emb = ev.dlib if model is None else _embed(model, x_ev)
        if label.startswith("fp32"):
            port = emb
        cos = _cos(emb, ev.dlib)
        pairs = pair_decisions(emb, ev.dlib, ev.identity, ev.face, names, THRESHOLD)
        # the port itself moves a few pairs that sit on the threshold; this isolates what quantization moves
        pairs["differ_from_fp32_port"] = pair_decisions(emb, port, ev.identity, ev.face, names, THRESHOLD)["differ"] \
            if model is not None else None
        rings = door_rings(emb, ev.identity, names, residents, THRESHOLD)
        door = ring_summary(rings, base_rings)
        stats = verification_stats(emb, ev.identity, THRESHOLD)
        summary[label] = {"mean_cos_to_dlib": float(cos.mean()), "min_cos_to_dlib": float(cos.min()),
                          "images": len(emb), "pairs": pairs, "door": door, "rings": rings,
                          "eer": stats["eer"], "best_threshold": stats["best_threshold"]}
        p = pairs
        pair_rows.append([label, f"{cos.mean():.5f}", f"{cos.min():.5f}",
                          f"{p['differ']} of {p['pairs']} ({p['differ_genuine']} genuine, {p['differ_impostor']} impostor)",
                          f"{p['genuine_accepted']}/{p['genuine_pairs']}",
                          f"{p['genuine_accepted_across_photos']}/{p['genuine_pairs_across_photos']}",
                          f"{p['impostor_rejected']}/{p['impostor_pairs']}",
                          ", ".join(f"{f['reference_distance']:.4f}" for f in p["flipped"]) or "-",
                          "-" if p["differ_from_fp32_port"] is None else str(p["differ_from_fp32_port"])])
        flip_rows += [[label, f["a"], f["b"], "same" if f["same_identity"] else "different", f["reference_says"],
                       f"{f['reference_distance']:.4f}", f"{f['distance']:.4f}"] for f in p["flipped"]]
        ring_rows.append([label, f"{door['residents_let_in']}/{door['resident_rings']}", str(door["wrong_resident"]),
                          f"{door['strangers_kept_out']}/{door['stranger_rings']}",
                          f"{door['same_as_reference']}/{door['rings']}"])
    for v in report.variants[1:]:
        v["fidelity"]["cosine_to_dlib"] = summary[v["label"]]["mean_cos_to_dlib"] if v["label"] in summary else float(
            _cos(_embed(results[v["label"]].model.SerializeToString(), x_ev), ev.dlib).mean())
    n_ids, n_cal_ids = len(set(ev.identity)), len(set(cal.identity))
    p0 = summary["dlib FP32 (reference)"]["pairs"]
    report.data["doorbell"] = summary
    report.data["faces"] = {"heldout_images": len(ev.face), "heldout_identities": n_ids,
                            "heldout_faces": len(set(ev.face)), "calibration_images": len(cal.face),
                            "calibration_identities": n_cal_ids, "variants": list(VARIANTS),
                            "residents": residents, "identity_rule": faces.merges}
    report.data["tables"] = [
        {"title": "Same person or not? Every pair of held-out images, against dlib",
         "header": ["model", "mean cos to dlib", "min cos to dlib", "pair decisions that differ from dlib's",
                    "genuine accepted", "genuine accepted, different photos", "impostors rejected",
                    "dlib distance of the differing pairs", "differ from the FP32 port's"], "rows": pair_rows,
         "caption": f"{len(ev.face)} held-out images of {n_ids} identities ({len(set(ev.face))} faces x "
                    f"{len(VARIANTS)} variants: {', '.join(VARIANTS)}): {p0['pairs']} pairs, {p0['genuine_pairs']} "
                    f"genuine ({p0['genuine_pairs_across_photos']} across photos), {p0['impostor_pairs']} impostor. "
                    f"Threshold 0.6 (dlib's). Cosines over the held-out images only."},
        {"title": "Pairs decided differently from dlib", "header": ["model", "image", "image", "identities",
                                                                    "dlib says", "dlib distance", "model distance"],
         "rows": flip_rows, "caption": "Every pair whose same / different decision differs from dlib's FP32 model."},
        {"title": "The door: residents and strangers ring", "header": ["model", "residents let in",
                                                                       "opened for the wrong resident",
                                                                       "strangers kept out", "decisions as dlib"],
         "rows": ring_rows,
         "caption": f"Residents ({', '.join(residents)}) enrolled with their first image; every other held-out "
                    "image rings; the door opens for the nearest resident closer than 0.6."},
    ]
    search = results["mixed"].report.data.get("search", {})
    report.data["search"] = search
    report.data["notes"].append(
        f"'mixed' is the accuracy-budgeted plan: mean cosine to FP32 >= {1 - MIXED_MAX_DROP:.4f} on half of the "
        f"calibration faces, confirmed on the other half ({search.get('holdout', {}).get('metric', float('nan')):.5f}); "
        f"{len(search.get('chosen', {}).get('promoted', {}))} layer(s) kept in FP16 weights.")
    report.data["notes"].append(
        f"Calibrated on {len(cal.face)} images of {n_cal_ids} identities from face-api's group photos; {n_ids} other "
        f"identities (face-api's and face_recognition's Obama and Biden) held out. Identities: each face dlib's CNN "
        f"detector finds, merged across photos where dlib's distances are all below 0.6 -- "
        f"{'; '.join(m for m in faces.merges if m.startswith('merged'))}. FP32 reference for decisions: dlib.")
    # everything is written at the end, together: a demo that fails leaves an earlier run's files as they were
    write_all([(out / "face_descriptor.fp32.onnx", fp32.SerializeToString()),
               *[(out / f"face_descriptor.{k}.onnx", r.model.SerializeToString()) for k, r in results.items()],
               (out / "report.json", report.to_json().encode()), (out / "report.html", report.to_html().encode())])
    return report
