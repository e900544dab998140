"""Face decisions of a candidate model against a reference's (dlib's FP32), over every pair of
held-out images and as door rings. Pure functions of embeddings and labels: no models run here."""

from __future__ import annotations

import numpy as np


def _distances(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, np.float64)
    i, j = np.triu_indices(len(emb), k=1)
    return np.linalg.norm(emb[i] - emb[j], axis=1)


def pair_decisions(emb: np.ndarray, ref: np.ndarray, ids: list[str], faces: list[str], names: list[str],
                   threshold: float) -> dict:
    """Same / different at ``threshold`` for every pair i < j, by ``emb`` and by ``ref``: how many
    decisions differ (genuine and impostor pairs apart), the rates against the identity labels, and
    each differing pair with both distances. ``faces`` names the detected face an image was made
    from: genuine pairs of one face (two variants) are easy, those of different photos are not."""
    i, j = np.triu_indices(len(emb), k=1)
    d, d_ref = _distances(emb), _distances(ref)
    same = np.asarray(ids)[i] == np.asarray(ids)[j]
    one_face = np.asarray(faces)[i] == np.asarray(faces)[j]
    accept, accept_ref = d < threshold, d_ref < threshold
    differ = accept != accept_ref
    cross = same & ~one_face
    flipped = [{"a": names[i[k]], "b": names[j[k]], "same_identity": bool(same[k]),
                "reference_distance": float(d_ref[k]), "distance": float(d[k]),
                "reference_says": "same" if accept_ref[k] else "different"}
               for k in np.flatnonzero(differ)]
    return {"threshold": threshold, "pairs": int(len(d)), "genuine_pairs": int(same.sum()),
            "impostor_pairs": int((~same).sum()), "genuine_pairs_across_photos": int(cross.sum()),
            "differ": int(differ.sum()), "differ_genuine": int((differ & same).sum()),
            "differ_impostor": int((differ & ~same).sum()),
            "genuine_accepted": int((accept & same).sum()), "impostor_rejected": int((~accept & ~same).sum()),
            "genuine_accepted_across_photos": int((accept & cross).sum()),
            # how close to the threshold the reference put the pairs whose decision changed
            "max_flip_distance_from_threshold": float(np.abs(d_ref[differ] - threshold).max()) if differ.any() else 0.0,
            "flipped": flipped}


def door_rings(emb: np.ndarray, ids: list[str], names: list[str], residents: list[str],
               threshold: float) -> list[dict]:
    """Enrol each resident's first image; every other image rings the bell, residents' and
    strangers' alike. The door opens for the nearest enrolled resident closer than ``threshold``."""
    enrolled = {}
    for k, who in enumerate(ids):
        if who in residents:
            enrolled.setdefault(who, k)
    keys = list(enrolled)
    gallery = np.asarray(emb, np.float64)[[enrolled[w] for w in keys]]
    out = []
    for k, who in enumerate(ids):
        if enrolled.get(who) == k:
            continue
        dists = np.linalg.norm(gallery - np.asarray(emb[k], np.float64), axis=1)
        best = int(np.argmin(dists))
        opens = keys[best] if dists[best] < threshold else None
        out.append({"image": names[k], "truth": who, "resident": who in residents, "opens_for": opens,
                    "distance": float(dists[best]), "correct": opens == (who if who in residents else None)})
    return out


def ring_summary(rings: list[dict], reference: list[dict]) -> dict:
    """Counts of a model's rings, and how many of its decisions are the reference's."""
    res = [r for r in rings if r["resident"]]
    strangers = [r for r in rings if not r["resident"]]
    return {"rings": len(rings), "resident_rings": len(res), "stranger_rings": len(strangers),
            "residents_let_in": sum(r["opens_for"] == r["truth"] for r in res),
            "wrong_resident": sum(r["opens_for"] not in (None, r["truth"]) for r in res),
            "strangers_kept_out": sum(r["opens_for"] is None for r in strangers),
            "same_as_reference": sum(a["opens_for"] == b["opens_for"] for a, b in zip(rings, reference))}
