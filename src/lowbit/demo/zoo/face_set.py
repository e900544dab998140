"""The doorbell's evaluation faces: many identities, each with several images, split once into
calibration faces and held-out faces by a fixed rule.

Identities: every face dlib's CNN detector finds in face-api's group photos is its own person,
except that faces from *different* photos are merged when dlib's own distances between all of them
are below 0.6 (closest pairs first, complete linkage); faces of one photo are never merged (one
person appears once in a photo), so a dlib match between them is kept apart and recorded.
face_recognition's photos add Obama and Biden.
Split: identities sorted by their first face, alternately held out and calibration; Obama and Biden
are always held out. Images: every face is seen six ways offline (``VARIANTS``): the photo, its
mirror, the detection box shifted by 8% of its width either way, the photo at half size, and 40%
darker. Built once (CNN detection ~30 s, dlib descriptors ~30 s) and cached beside the face data.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lowbit.demo.zoo.face_descriptor import MATCH_THRESHOLD, faces_data_dir
from lowbit.demo.zoo.faces import (align_box, cnn_face_boxes, dlib_embeddings, group_photos, hog_face_boxes,
                                   labeled_faces, load_rgb)
from lowbit.io import atomic_write_bytes

VARIANTS = ("photo", "mirror", "box +8%", "box -8%", "half size", "darker")
CACHE_NAME = "face_set_v2.npz"


@dataclass(frozen=True)
class FaceSet:
    """Aligned chips with their provenance; ``dlib`` holds dlib's FP32 descriptor of each chip."""

    chips: np.ndarray  # (n, 150, 150, 3) uint8
    face: list[str]  # "sample3.jpg#1": photo and face index (left to right)
    variant: list[str]  # one of VARIANTS
    identity: list[str]
    heldout: np.ndarray  # (n,) bool
    dlib: np.ndarray  # (n, 128) float32
    merges: list[str]  # how identities were formed, for the report

    def select(self, mask: np.ndarray) -> FaceSet:
        idx = np.flatnonzero(mask)
        return FaceSet(self.chips[idx], [self.face[i] for i in idx], [self.variant[i] for i in idx],
                       [self.identity[i] for i in idx], self.heldout[idx], self.dlib[idx], self.merges)


def face_variants(image: np.ndarray, box: tuple[int, int, int, int]) -> list[np.ndarray]:
    """The chips of one face in ``VARIANTS`` order: what a camera at the door sees on other days."""
    left, top, right, bottom = box
    d = round(0.08 * (right - left))  # a detector's box jitters by a few percent between frames
    chip = align_box(image, box)
    return [chip, np.ascontiguousarray(chip[:, ::-1]),
            align_box(image, (left + d, top + d, right + d, bottom + d)),
            align_box(image, (left - d, top - d, right - d, bottom - d)),
            _half_size(image, box),
            np.round(chip * np.float32(0.6)).astype(np.uint8)]


def _half_size(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The face as a camera twice as far away sees it: a 2x2 box-filtered crop, then aligned."""
    left, top, right, bottom = box
    w = right - left
    x0, y0 = max(0, left - w) // 2 * 2, max(0, top - w) // 2 * 2  # even, so the box maps back exactly
    crop = image[y0:bottom + w, x0:right + w]
    small = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).reduce(2))
    return align_box(small, ((left - x0) // 2, (top - y0) // 2, (right - x0) // 2, (bottom - y0) // 2))


def merge_identities(emb: np.ndarray, photos: list[str], threshold: float = MATCH_THRESHOLD
                     ) -> tuple[list[int], list[str]]:
    """(identity index per face, what was merged or kept apart): closest pairs first, two groups of
    faces merged when every pair between them is below ``threshold`` (complete linkage: a chain of
    borderline matches does not make one person) and no photo would hold the person twice."""
    n = len(emb)
    group = list(range(n))
    members = {i: [i] for i in range(n)}
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    i, j = np.triu_indices(n, 1)
    notes = []
    for k in np.argsort(dist[i, j], kind="stable"):
        a, b = int(i[k]), int(j[k])
        if dist[a, b] >= threshold:
            break
        ga, gb = group[a], group[b]
        if ga == gb:
            continue
        if {photos[m] for m in members[ga]} & {photos[m] for m in members[gb]}:
            notes.append(f"kept apart: {a} and {b} (dlib {dist[a, b]:.3f}; one photo would hold the person twice)")
            continue
        if dist[np.ix_(members[ga], members[gb])].max() >= threshold:  # complete linkage: no chains
            notes.append(f"kept apart: {a} and {b} (dlib {dist[a, b]:.3f}; other faces of the two are >= {threshold})")
            continue
        notes.append(f"merged: {a} and {b} (dlib {dist[a, b]:.3f})")
        for m in members.pop(gb):
            group[m] = ga
            members[ga].append(m)
    return group, notes


def build_face_set() -> FaceSet:
    """Detect, align, label, split and describe every face (about a minute; ``face_set`` caches it)."""
    faces = []  # (face name, photo, box, identity or None)
    for path in group_photos():
        image = load_rgb(path)
        faces += [(f"{path.name}#{k}", image, box, None) for k, box in enumerate(cnn_face_boxes(image))]
    originals = [align_box(image, box) for _, image, box, _ in faces]
    group, notes = merge_identities(dlib_embeddings(originals), [f.split("#")[0] for f, *_ in faces])
    names = [f for f, *_ in faces]
    merges = [_name_faces(note, names) for note in notes]
    order = sorted(set(group), key=group.index)  # identities in the order of their first face
    ident = {g: f"person {k + 1}" for k, g in enumerate(order)}
    heldout_ids = {ident[g] for k, g in enumerate(order) if k % 2 == 0}
    labeled = []
    for path, who in labeled_faces():
        image = load_rgb(path)
        boxes = hog_face_boxes(image)
        if boxes:
            labeled.append((path.name + "#0", image, boxes[0], who))
            heldout_ids.add(who)
    rows = [(f, image, box, ident[group[k]]) for k, (f, image, box, _) in enumerate(faces)] + labeled
    chips, face, variant, identity = [], [], [], []
    for f, image, box, who in rows:
        chips += face_variants(image, box)
        face += [f] * len(VARIANTS)
        variant += list(VARIANTS)
        identity += [who] * len(VARIANTS)
    return FaceSet(np.stack(chips), face, variant, identity, np.array([w in heldout_ids for w in identity]),
                   dlib_embeddings(chips), merges)


def _name_faces(note: str, names: list[str]) -> str:
    head, rest = note.split(": ", 1)
    a, rest = rest.split(" and ", 1)
    b, rest = rest.split(" ", 1)
    return f"{head}: {names[int(a)]} and {names[int(b)]} {rest}"


def face_set(cache: Path | None = None) -> FaceSet:
    """The cached ``build_face_set()``; an unreadable or stale cache is rebuilt."""
    cache = cache or faces_data_dir() / CACHE_NAME
    try:
        with np.load(cache, allow_pickle=False) as z:
            return FaceSet(z["chips"], *(list(map(str, z[k])) for k in ("face", "variant", "identity")),
                           z["heldout"], z["dlib"], list(map(str, z["merges"])))
    except (OSError, KeyError, ValueError):
        pass
    fs = build_face_set()
    buf = io.BytesIO()
    np.savez(buf, chips=fs.chips, face=np.array(fs.face), variant=np.array(fs.variant),
             identity=np.array(fs.identity), heldout=fs.heldout, dlib=fs.dlib, merges=np.array(fs.merges, dtype=str))
    atomic_write_bytes(cache, buf.getvalue())
    return fs
