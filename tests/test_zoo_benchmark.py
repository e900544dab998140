"""The zoo benchmark's data contracts: disjoint calibration/evaluation sources, the framing and
features each model expects, and the table's pins."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.zoo import data  # noqa: E402
from benchmarks.zoo.models import ZOO  # noqa: E402
from lowbit.metrics import METRICS  # noqa: E402


def test_text_and_files_are_disjoint_between_splits():
    assert not set(data.docstring_lines("calib")) & set(data.docstring_lines("eval"))
    assert not set(data.VOICES["calib"]) & set(data.VOICES["eval"])
    calib = {tuple(x) for x in data.magika_bytes("calib", 50)}
    assert calib and not calib & {tuple(x) for x in data.magika_bytes("eval", 50)}


def test_magika_features(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"  \n hello \n\n")  # whitespace stripped at both ends, then padded with 256
    x = data.magika_features(str(f))
    assert x.shape == (2048,) and x.dtype == np.int32
    # the head keeps its trailing whitespace and the tail its leading whitespace, as magika does
    assert bytes(x[:8].astype(np.uint8)) == b"hello \n\n" and (x[8:1024] == 256).all()
    assert bytes(x[-9:].astype(np.uint8)) == b"  \n hello" and (x[1024:-9] == 256).all()


def test_vad_chunks_carry_64_samples_of_context():
    audio = np.arange(1100, dtype=np.float32)
    chunks = data.vad_chunks(audio)
    assert chunks.shape == (2, 576)
    assert (chunks[0, :64] == 0).all() and (chunks[1, :64] == audio[448:512]).all()
    assert (chunks[1, 64:] == audio[512:1024]).all()


def test_zoo_table_is_pinned_and_scored_by_registered_metrics():
    for entry in ZOO.values():
        assert "==" in entry.package and len(entry.sha256) == 64 and entry.member.endswith(".onnx")
        METRICS.create(entry.metric, **entry.metric_options)
        assert entry.data in data.BUILDERS
    assert len({e.task for e in ZOO.values()}) >= 8
