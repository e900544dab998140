"""Memory and time stay bounded (issue 15, section 4): hostile data files are read only as far as
a run needs them, big images are refused or decoded small, huge graphs are checked and quantized
in linear time, and the budget search's evaluator holds a bounded amount of data."""

from __future__ import annotations

import io
import logging
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from redteam_util import assert_clean_failure, run_cli, snapshot, assert_unchanged, temp_files

from lowbit.search.budget import split_halves
from lowbit.search.evaluate import PlanEvaluator
from lowbit.search.held import MAX_HELD_BYTES, MAX_HELD_SAMPLES, HoldCap
from lowbit.data import InputSpec, as_feeds
from lowbit.errors import DataError, ModelError
from lowbit.load.model import export_torch, load_model
from lowbit.load.checks import check_graph

RSS_LIMIT_MB = 500
# run_cli's peak is the child's, but a forked child starts from this process's own peak: anything
# big is built in a subprocess (or streamed) so this process stays small for every later test


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory) -> Path:
    """A small CNN taking (N, 3, 32, 32) as 'input'."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    path = tmp_path_factory.mktemp("bounds") / "cnn.onnx"
    path.write_bytes(export_torch(net, torch.zeros(1, 3, 32, 32), input_names=["input"]).SerializeToString())
    return path


def quantize_cli(model: Path, data: Path, out: Path, *extra: str):
    return run_cli("quantize", model, "--calib", data, "--precision", "int8-fast", "--no-verify", "-o", out, *extra)


# --- .npz and .npy files ------------------------------------------------------------------------

def zip_bomb(path: Path, key: str, shape: tuple[int, ...]) -> None:
    """An .npz whose member really inflates to shape x float32 of zeros (deflate makes it tiny)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            left, block = int(np.prod(shape)) * 4, bytes(16 << 20)
            while left:
                f.write(block[: min(left, len(block))])
                left -= min(left, len(block))


def test_npz_zip_bomb_is_read_only_as_far_as_the_limit(conv_model, tmp_path):
    bomb = tmp_path / "bomb.npz"
    zip_bomb(bomb, "input", (2**31 // (3 * 32 * 32 * 4), 3, 32, 32))  # 2 GiB of zeros
    assert bomb.stat().st_size < 16 * 2**20
    before = snapshot(bomb)
    run = quantize_cli(conv_model, bomb, tmp_path / "out.onnx", "--calib-limit", "16")
    if run.rc == 0:
        assert (tmp_path / "out.onnx").is_file()
    else:
        assert_clean_failure(run, "bomb.npz")
    assert run.peak_rss_mb < RSS_LIMIT_MB, f"peak RSS {run.peak_rss_mb:.0f} MB for a 16-sample calibration"
    assert_unchanged(before)
    assert temp_files(tmp_path) == []


def test_npz_member_declaring_more_than_the_zip_holds_is_refused(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((2, 3, 4, 4), np.float32))
    lying = buf.getvalue().replace(b"(2, 3, 4, 4)", b"(999999, 3, 4, 4)")  # same header length
    with zipfile.ZipFile(tmp_path / "lie.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", lying)
    with pytest.raises(DataError, match=r"lie\.npz: array 'x' declares shape \(999999, 3, 4, 4\).*archive holds"):
        list(as_feeds(tmp_path / "lie.npz", [InputSpec("x", ("N", 3, 4, 4), np.float32)]))


def test_npz_is_read_in_chunks_with_labels_and_sample_numbers_as_in_the_file(tmp_path, monkeypatch):
    import lowbit.data.npz as npz

    monkeypatch.setattr(npz, "CHUNK_BYTES", 5 * 48 * 4)  # 5 rows per chunk: batches cross chunk edges
    x = np.random.default_rng(0).standard_normal((23, 3, 4, 4)).astype(np.float32)
    x[17, 0, 0, 0] = np.nan
    np.savez_compressed(tmp_path / "d.npz", x=x, labels=np.arange(23))
    spec = InputSpec("x", ("N", 3, 4, 4), np.float32)
    src = as_feeds(tmp_path / "d.npz", [spec], batch_size=2, skip_bad=True)
    batches = list(src)
    assert len(src) == 12 and src.skipped[0][0].endswith("d.npz[17]")
    np.testing.assert_array_equal(np.concatenate([b.feeds["x"] for b in batches]), np.delete(x, 17, axis=0))
    assert np.concatenate([b.labels for b in batches]).tolist() == [i for i in range(23) if i != 17]
    with pytest.raises(DataError, match=r"d\.npz\[16:18\].*sample 17"):
        list(as_feeds(tmp_path / "d.npz", [spec], batch_size=2))


def test_large_npy_in_a_folder_is_memory_mapped(conv_model, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    rows = 600 * 2**20 // (3 * 32 * 32 * 4)
    big = np.lib.format.open_memmap(folder / "big.npy", mode="w+", dtype=np.float32, shape=(rows, 3, 32, 32))
    del big  # a sparse file of zeros: 600 MB that cost nothing to write
    run = quantize_cli(conv_model, folder, tmp_path / "out.onnx", "--calib-limit", "16")
    assert run.rc == 0, run.text[-2000:]
    assert run.peak_rss_mb < RSS_LIMIT_MB, f"peak RSS {run.peak_rss_mb:.0f} MB: the 600 MB file was read whole"


# --- images -------------------------------------------------------------------------------------

def solid_png(path: Path, width: int, height: int) -> None:
    """An RGB PNG of one colour, written row by row (a 13000 x 13000 image without 500 MB in RAM)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(1)
    row = b"\x00" + bytes([40, 90, 140]) * width
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_huge_png_is_refused_from_its_header(conv_model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    solid_png(folder / "huge.png", 13000, 13000)  # 169 MP: below PIL's own bomb limit (179 MP)
    run = quantize_cli(conv_model, folder, tmp_path / "out.onnx", "--preprocess", "resize=32,crop=32")
    assert_clean_failure(run, r"huge\.png.*13000x13000.*max_pixels")
    assert run.peak_rss_mb < RSS_LIMIT_MB
    assert not (tmp_path / "out.onnx").exists()


def test_huge_jpeg_is_decoded_at_a_reduced_scale(conv_model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    subprocess.run([sys.executable, "-c", "import sys; from PIL import Image; Image.new('RGB', (9000, 9000), "
                    "(40, 90, 140)).save(sys.argv[1], quality=50)", str(folder / "huge.jpg")], check=True)  # 81 MP
    run = quantize_cli(conv_model, folder, tmp_path / "out.onnx", "--preprocess", "resize=32,crop=32")
    assert run.rc == 0, run.text[-2000:]  # decoded at 1/8 scale (1125 x 1125), within the pixel bound
    assert run.peak_rss_mb < RSS_LIMIT_MB


# --- graphs of 10,000 nodes ---------------------------------------------------------------------

def chain(n: int, reverse: bool = False, width: int = 8) -> onnx.ModelProto:
    """MatMul / Relu alternating, n nodes; `reverse` stores them in reverse topological order."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    scale = 1.0 / np.sqrt(width)
    for i in range(n):
        if i % 2 == 0:
            w = (rng.standard_normal((width, width)) * scale).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"t{i}"], name=f"mm{i}"))
        else:
            nodes.append(helper.make_node("Relu", [x], [f"t{i}"], name=f"relu{i}"))
        x = f"t{i}"
    graph = helper.make_graph(nodes[::-1] if reverse else nodes, "chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_10k_node_graph_in_reverse_order_is_checked_in_linear_time(tmp_path):
    model = chain(10_000, reverse=True)
    t0 = time.perf_counter()
    check_graph(model.graph, set(), "chain.onnx")  # was 137 s: one sweep of the node list per node
    assert time.perf_counter() - t0 < 10
    onnx.save(model, tmp_path / "chain.onnx")
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="topologically sorted"):
        load_model(tmp_path / "chain.onnx")
    assert time.perf_counter() - t0 < 10
    broken = chain(2000)
    broken.graph.node[1000].input[0] = "t1500"  # a cycle through 500 nodes
    with pytest.raises(ModelError, match="a cycle"):
        check_graph(broken.graph, set(), "broken.onnx")


def test_10k_node_graph_is_quantized_in_bounded_time(tmp_path):
    # 16-wide layers: with 8x8 weights the Q/DQ nodes outweigh the bytes INT8 saves, and lowbit
    # refuses to write a larger file. Objective 'size': whether 5000 tiny integer MatMuls beat FP32
    # depends on the CPU, and a slower INT8 graph would ship weight-only (lowbit.target.model_speed)
    onnx.save(chain(10_000, width=16), tmp_path / "chain.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32))
    t0 = time.perf_counter()  # the CLI with --no-verify: quantize(..., verify=None) in its own process
    run = run_cli("quantize", tmp_path / "chain.onnx", "--calib", tmp_path / "calib.npy", "--precision", "int8-fast",
                  "--objective", "size", "--no-verify", "-o", tmp_path / "q.onnx", env={"LOWBIT_CACHE": str(tmp_path / "cache")})
    assert run.rc == 0, run.text[-2000:]
    assert time.perf_counter() - t0 < 60  # 100 s before layer shapes were indexed; ~10 s now
    ops = [n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node]
    assert ops.count("MatMul") + ops.count("MatMulInteger") + ops.count("QLinearMatMul") == 5000
    assert ops.count("QuantizeLinear") > 0


# --- what the budget search's evaluator holds ---------------------------------------------------

def relu_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "r",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def counting_samples(n: int, read: list[int]):
    def samples():
        for i in range(n):
            read.append(i)
            yield np.full(4, i, np.float32)
    return samples


def test_evaluator_holds_a_bounded_number_of_samples_and_leaves_the_rest_unread(caplog):
    spec = [InputSpec("x", ("N", 4), np.float32)]
    read: list[int] = []
    data = as_feeds(counting_samples(50_000, read), spec, batch_size=10)
    with caplog.at_level(logging.WARNING):
        ev = PlanEvaluator(relu_model(), data, "cosine", max_samples=300)
    assert sum(b.size for b in ev.batches) == len(ev.reference) == 300
    assert len(read) < 400  # not the 50,000 samples the source holds
    assert ev.held == {"held_samples": 300, "held_mb": 0.0, "max_samples": 300, "max_mb": MAX_HELD_BYTES / 2**20}
    assert "kept the first 300 samples" in caplog.text
    ev = PlanEvaluator(relu_model(), as_feeds(np.ones((1000, 4), np.float32), spec, batch_size=10), "cosine",
                       max_bytes=4000)  # 32 bytes per sample (input and output)
    assert 125 <= len(ev.reference) <= 135 and ev.held["held_samples"] == len(ev.reference)
    ev = PlanEvaluator(relu_model(), as_feeds(np.ones((100, 4), np.float32), spec, batch_size=10), "cosine")
    assert ev.held is None and len(ev.reference) == 100


def test_budget_halves_are_streamed_under_the_cap():
    spec = [InputSpec("x", ("N", 4), np.float32)]
    read: list[int] = []
    cap = HoldCap(max_samples=1000)
    search, confirm = split_halves(as_feeds(counting_samples(40_000, read), spec, batch_size=1), cap)
    assert len(search) == len(confirm) == 500 and len(read) <= 1001
    assert cap.record()["held_samples"] == 1000
    # the defaults hold the 2000 ImageNet crops a 1% budget needs, and no more than 1.5 GiB
    assert MAX_HELD_SAMPLES >= 2000 and 2000 * 3 * 224 * 224 * 4 < MAX_HELD_BYTES <= 1.5 * 2**30
