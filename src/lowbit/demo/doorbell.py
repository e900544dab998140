"""`lowbit demo doorbell`: the smart doorbell. A real face descriptor (dlib's ResNet, ported to
torch from face-api's weights) quantized to FP16 and INT8, then used to open the door: enrol one
photo per person, verify the others, and compare every decision with dlib's own FP32 model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lowbit.api import VerifyOptions, compare_variants, quantize
from lowbit.io import atomic_write_bytes, write_all
from lowbit.load import export_torch
from lowbit.metrics import verification_stats
from lowbit.observe import session
from lowbit.progress import Progress, null_progress
from lowbit.report import Report

THRESHOLD = 0.6  # dlib's same-person distance threshold
# The mixed plan's budget: mean embedding cosine to FP32 at most this far below 1 (the search keeps
# the most sensitive layers in FP16 weights until it holds on half of the faces).
MIXED_MAX_DROP = 0.0003


def face_chips() -> tuple[list[np.ndarray], list[str], list[str], list[np.ndarray]]:
    """(labeled chips, their identities, their photo names, unlabeled chips), cached on disk:
    dlib's detector takes ~1 minute on the group photos, the chips never change."""
    from lowbit.zoo.face_descriptor import faces_data_dir
    from lowbit.zoo.faces import detect_and_align, labeled_faces, load_rgb, unlabeled_faces

    cache = faces_data_dir() / "chips.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return list(z["labeled"]), [str(s) for s in z["ids"]], [str(s) for s in z["names"]], list(z["unlabeled"])
    labeled, ids, names = [], [], []
    for path, identity in labeled_faces():
        chips = detect_and_align(load_rgb(path))
        if chips:
            labeled.append(chips[0])
            ids.append(identity)
            names.append(Path(path).name)
    unlabeled = unlabeled_faces()
    atomic_write_bytes(cache, _npz(labeled=np.stack(labeled), ids=np.array(ids), names=np.array(names),
                                   unlabeled=np.stack(unlabeled)))
    return labeled, ids, names, unlabeled


def _npz(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _embed(model: bytes, x: np.ndarray) -> np.ndarray:
    return session(model).run(None, {"input": x})[0]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def door_decisions(emb: np.ndarray, ids: list[str], names: list[str], threshold: float) -> list[dict]:
    """Enrol the first photo of each person; every other photo rings the bell."""
    enrolled = {}
    for i, who in enumerate(ids):
        enrolled.setdefault(who, i)
    out = []
    for i, (who, name) in enumerate(zip(ids, names)):
        if enrolled[who] == i:
            continue
        dists = {p: float(np.linalg.norm(emb[i] - emb[j])) for p, j in enrolled.items()}
        best = min(dists, key=dists.get)
        opened = dists[best] < threshold
        out.append({"photo": name, "truth": who, "opens_for": best if opened else None,
                    "distance": dists[best], "margin": threshold - dists[best] if opened else dists[best] - threshold})
    return out


def run_doorbell(out: Path, threads: tuple[int, ...] = (1,), latency_runs: int = 30,
                 progress: Progress = null_progress) -> Report:
    import torch

    from lowbit.zoo.face_descriptor import face_descriptor
    from lowbit.zoo.faces import chip_to_input, dlib_embeddings

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fp32 = export_torch(face_descriptor(), torch.zeros(1, 3, 150, 150))
    labeled, ids, names, unlabeled = face_chips()
    x_lab = np.stack([chip_to_input(c) for c in labeled])
    x_unl = np.stack([chip_to_input(c) for c in unlabeled])
    # calibrate on the unlabeled group-photo faces and their mirror images; the labeled faces
    # that the door decides on are never seen by calibration
    calib = list(np.concatenate([x_unl, x_unl[..., ::-1]]))
    everyone = list(np.concatenate([x_lab, x_unl]))
    results = {"fp16": quantize(fp32, "fp16", verify=None),
               "int8": quantize(fp32, "int8", calib, verify=None, progress=progress),
               "mixed": quantize(fp32, "int8", calib, verify=None, eval_data=everyone, metric="cosine",
                                 max_drop=MIXED_MAX_DROP, search_evals=16, progress=progress)}
    report = compare_variants(fp32, results, everyone, verify=VerifyOptions(threads=threads, latency_runs=latency_runs),
                              progress=progress, title="lowbit demo: the doorbell (dlib ResNet face descriptor)")
    ref_dlib = {"labeled": dlib_embeddings(labeled), "all": dlib_embeddings(labeled + unlabeled)}
    variants = {"dlib FP32 (reference)": None, "fp32 (lowbit port)": fp32.SerializeToString(),
                **{k: r.model.SerializeToString() for k, r in results.items()}}
    rows, decisions_rows, summary = [], [], {}
    base = door_decisions(ref_dlib["labeled"], ids, names, THRESHOLD)
    for label, model in variants.items():
        e_all = ref_dlib["all"] if model is None else _embed(model, np.concatenate([x_lab, x_unl]))
        e_lab = e_all[: len(labeled)]
        cos_dlib = _cos(e_all, ref_dlib["all"])
        stats = verification_stats(e_lab, ids, THRESHOLD)
        dec = door_decisions(e_lab, ids, names, THRESHOLD)
        same = sum(a["opens_for"] == b["opens_for"] for a, b in zip(dec, base))
        retuned = door_decisions(e_lab, ids, names, stats["best_threshold"])
        summary[label] = {"mean_cos_to_dlib": float(cos_dlib.mean()), "min_cos_to_dlib": float(cos_dlib.min()),
                          "verification": stats, "decisions_as_dlib": f"{same}/{len(base)}",
                          "decisions": dec}
        rows.append([label, f"{cos_dlib.mean():.5f}", f"{cos_dlib.min():.5f}", f"{stats['accuracy']:.3f}",
                     f"{stats['max_same_distance']:.3f}", f"{stats['min_different_distance']:.3f}",
                     f"{same}/{len(base)}", f"{stats['best_threshold']:.3f}",
                     f"{sum(a['opens_for'] == b['opens_for'] for a, b in zip(retuned, base))}/{len(base)}"])
        for d in dec:
            decisions_rows.append([label, d["photo"], d["truth"], d["opens_for"] or "stays shut",
                                   f"{d['distance']:.3f}", f"{d['margin']:+.3f}"])
    for v in report.variants[1:]:
        e = _embed(results[v["label"]].model.SerializeToString(), np.concatenate([x_lab, x_unl]))
        v["fidelity"]["cosine_to_dlib"] = float(_cos(e, ref_dlib["all"]).mean())
    report.data["doorbell"] = summary
    report.data["tables"] = [
        {"title": "Does the door open for the right person?",
         "header": ["model", "mean cos to dlib", "min cos to dlib", "pair accuracy @0.6", "max same-person dist",
                    "min different-person dist", "door decisions as dlib", "re-tuned threshold",
                    "decisions as dlib @re-tuned"], "rows": rows,
         "caption": f"{len(labeled)} labeled faces ({', '.join(names)}) and {len(unlabeled)} unlabeled faces; "
                    "cosines over all of them; pair statistics and door decisions on the labeled ones."},
        {"title": "Every ring of the bell", "header": ["model", "photo", "who it is", "door opens for",
                                                      "distance to enrolled", "margin to threshold"],
         "rows": decisions_rows, "caption": "Enrolled: the first photo of each person. Threshold 0.6 (dlib's)."},
    ]
    search = results["mixed"].report.data.get("search", {})
    report.data["search"] = search
    report.data["notes"].append(
        f"'mixed' is the accuracy-budgeted plan: mean cosine to FP32 >= {1 - MIXED_MAX_DROP:.4f} on half of the faces, "
        f"confirmed on the other half ({search.get('holdout', {}).get('metric', float('nan')):.5f}); "
        f"{len(search.get('chosen', {}).get('promoted', {}))} layer(s) kept in FP16 weights.")
    report.data["notes"].append(
        f"Calibrated on the {len(unlabeled)} unlabeled faces of face-api's group photos and their mirror images; the "
        f"{len(labeled)} labeled faces that the door decides on were held out. FP32 reference for decisions: dlib.")
    # everything is written at the end, together: a demo that fails leaves an earlier run's files as they were
    write_all([(out / "face_descriptor.fp32.onnx", fp32.SerializeToString()),
               *[(out / f"face_descriptor.{k}.onnx", r.model.SerializeToString()) for k, r in results.items()],
               (out / "report.json", report.to_json().encode()), (out / "report.html", report.to_html().encode())])
    return report
