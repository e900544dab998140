"""Contracts of lowbit.data: every data form, streaming, validation messages, preprocessing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from lowbit.data import Batch, FeedSource, ImagePreprocess, InputSpec, as_feeds, specs_from_onnx
from lowbit.errors import ConfigError, DataError

X = InputSpec("x", ("N", 3, 4, 4), np.float32)
A, B = InputSpec("a", ("N", 4), np.float32), InputSpec("b", ("N", 2), np.int64)
SMALL = ImagePreprocess(resize=None, crop=None, scale=1.0, mean=(0.0,), std=(1.0,))


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def sizes(src: FeedSource) -> list[int]:
    return [b.size for b in src]


def image(path, colour=(10, 20, 30), size=(6, 5)):
    Image.new("RGB", size, colour).save(path)
    return path


# --- every accepted form -------------------------------------------------------------------------

def test_array_is_cut_into_batches_with_len():
    src = as_feeds(rand(10, 3, 4, 4), [X], batch_size=4)
    batches = list(src)
    assert [b.size for b in batches] == [4, 4, 2] and len(src) == 3
    assert isinstance(batches[0], Batch) and batches[0].source == "array[0:4]"
    assert batches[0].feeds["x"].dtype == np.float32 and batches[0].labels is None


def test_sample_without_batch_axis_gets_one():
    (b,) = as_feeds(rand(3, 4, 4), [X])
    assert b.feeds["x"].shape == (1, 3, 4, 4)


def test_dict_of_arrays_for_multi_input_with_labels():
    data = {"a": rand(5, 4), "b": np.arange(10).reshape(5, 2), "labels": np.arange(5)}
    batches = list(as_feeds(data, [A, B], batch_size=2))
    assert [b.size for b in batches] == [2, 2, 1]
    assert batches[1].labels.tolist() == [2, 3] and batches[0].feeds["b"].dtype == np.int64


def test_npy_and_npz_files(tmp_path):
    np.save(tmp_path / "x.npy", rand(6, 3, 4, 4))
    batches = list(as_feeds(tmp_path / "x.npy", [X], batch_size=4))  # memory-mapped, read per batch
    assert [b.size for b in batches] == [4, 2] and type(batches[0].feeds["x"]) is np.ndarray
    np.savez(tmp_path / "d.npz", a=rand(3, 4), b=np.ones((3, 2), np.int64), y=np.array([7, 8, 9]))
    (b,) = as_feeds(str(tmp_path / "d.npz"), [A, B], batch_size=3)
    assert b.labels.tolist() == [7, 8, 9] and b.source == str(tmp_path / "d.npz")


def test_folder_of_npy_and_npz_samples_and_batches(tmp_path):
    np.save(tmp_path / "0.npy", rand(3, 4, 4))     # one sample
    np.save(tmp_path / "1.npy", rand(2, 3, 4, 4))  # a batch, kept whole
    np.save(tmp_path / "2.npy", rand(3, 4, 4))
    (tmp_path / "README.txt").write_text("ignored")
    batches = list(as_feeds(tmp_path, [X], batch_size=4))
    assert [b.size for b in batches] == [1, 2, 1] and batches[1].source.endswith("1.npy")
    folder = tmp_path / "z"
    folder.mkdir()
    for i in range(3):
        np.savez(folder / f"{i}.npz", a=rand(4), b=np.ones(2, np.int64), label=np.array(i))
    batches = list(as_feeds(folder, [A, B], batch_size=3))
    assert len(batches) == 1 and batches[0].labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "data, specs",
    [
        ([rand(3, 4, 4, seed=i) for i in range(3)], [X]),
        ([(rand(3, 4, 4), 1), (rand(3, 4, 4), 2), (rand(3, 4, 4), 3)], [X]),  # (x, y) pairs
        ([(rand(4), np.ones(2, np.int64)) for _ in range(3)], [A, B]),  # positional inputs
        ([({"a": rand(4), "b": np.ones(2, np.int32)}, 5) for _ in range(3)], [A, B]),  # (dict, y)
        ([{"a": rand(4), "b": np.ones(2, np.int64)} for _ in range(3)], [A, B]),
        ([torch.zeros(3, 4, 4) for _ in range(3)], [X]),
        (lambda: (rand(3, 4, 4) for _ in range(3)), [X]),  # a function returning a fresh iterable
    ],
)
def test_iterables_of_samples_regroup_and_reiterate(data, specs):
    src = as_feeds(data, specs, batch_size=2)
    first, second = list(src), list(src)
    assert [b.size for b in first] == [2, 1] == [b.size for b in second]
    for b1, b2 in zip(first, second):
        assert b1.source == b2.source
        for k in b1.feeds:
            np.testing.assert_array_equal(b1.feeds[k], b2.feeds[k])


def test_dataloader_with_labels_keeps_its_batches():
    ds = TensorDataset(torch.randn(10, 3, 4, 4), torch.arange(10))
    batches = list(as_feeds(DataLoader(ds, batch_size=4), [X]))
    assert [b.size for b in batches] == [4, 4, 2]
    assert batches[2].labels.tolist() == [8, 9] and batches[0].source == "DataLoader[0]"
    assert isinstance(batches[0].feeds["x"], np.ndarray)


def test_generator_is_rejected_and_feedsource_passes_through():
    with pytest.raises(DataError, match="one-shot iterator.*consumed after one pass.*list"):
        as_feeds((rand(3, 4, 4) for _ in range(2)), [X])
    src = as_feeds(rand(2, 3, 4, 4), [X])
    assert as_feeds(src, [X]) is src


def test_folder_is_streamed_not_loaded_up_front(tmp_path, monkeypatch):
    for i in range(200):
        np.save(tmp_path / f"{i:03d}.npy", np.full((3, 4, 4), i, np.float32))
    calls = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    src = as_feeds(tmp_path, [X], batch_size=4)
    assert calls == []
    it = iter(src)
    first = next(it)
    assert len(calls) == 4 and first.feeds["x"][:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert sum(b.size for b in it) == 196 and len(calls) == 200


def test_limit_caps_samples(tmp_path):
    assert sizes(as_feeds(rand(10, 3, 4, 4), [X], batch_size=4, limit=5)) == [4, 1]
    assert sizes(as_feeds([rand(3, 4, 4)] * 10, [X], batch_size=3, limit=4)) == [3, 1]
    with pytest.raises(TypeError):
        len(as_feeds([rand(3, 4, 4)] * 10, [X]))  # not known without reading the items


def test_pil_images_and_image_label_pairs_in_a_list():
    pairs = [(Image.new("RGB", (6, 5), (i, i, i)), i) for i in range(3)]
    batches = list(as_feeds(pairs, [InputSpec("x", ("N", 3, 5, 6), np.float32)], preprocess=SMALL, batch_size=3))
    assert batches[0].labels.tolist() == [0, 1, 2] and batches[0].feeds["x"][2, 0, 0, 0] == 2.0


def test_fixed_batch_dim_recuts_and_rejects_other_batch_size():
    fixed = InputSpec("x", (2, 3, 4, 4), np.float32)
    ds = TensorDataset(torch.randn(7, 3, 4, 4))
    assert sizes(as_feeds(DataLoader(ds, batch_size=3), [fixed])) == [2, 2, 2]  # last one dropped
    with pytest.raises(ConfigError, match="fixed to 2"):
        as_feeds(rand(4, 3, 4, 4), [fixed], batch_size=8)


# --- validation messages -----------------------------------------------------------------------

def test_unknown_and_missing_input_names():
    with pytest.raises(DataError, match=r"list\[0\].*unknown input name 'aa'.*Did you mean 'a'"):
        list(as_feeds([{"aa": rand(4), "b": np.ones(2, np.int64)}], [A, B]))
    with pytest.raises(DataError, match=r"list\[0\].*input 'b' is missing"):
        list(as_feeds([{"a": rand(4)}], [A, B]))


def test_wrong_rank_and_fixed_dim_with_transpose_hint(tmp_path):
    with pytest.raises(DataError, match=r"input 'x' expects rank 4.*got rank 2"):
        as_feeds(rand(4, 4), [X])
    np.save(tmp_path / "nhwc.npy", rand(1, 4, 4, 3))
    with pytest.raises(DataError, match=r"nhwc\.npy.*'x' expects shape \(N, 3, 4, 4\), got \(1, 4, 4, 3\).*NHWC.*transpose\(0, 3, 1, 2\)"):
        as_feeds(tmp_path / "nhwc.npy", [X])


def test_image_folder_into_nhwc_model_hints_layout(tmp_path):
    image(tmp_path / "a.png", size=(4, 4))
    nhwc = InputSpec("x", ("N", 4, 4, 3), np.float32)
    with pytest.raises(DataError, match=r"a\.png.*layout='NHWC'"):
        list(as_feeds(tmp_path, [nhwc], preprocess=SMALL))
    assert list(as_feeds(tmp_path, [nhwc], preprocess=ImagePreprocess(resize=None, crop=None, layout="NHWC")))


def test_dtype_kinds_and_safe_casts():
    with pytest.raises(DataError, match=r"input 'x' takes float32 but got integer data \(uint8\).*/ 255"):
        list(as_feeds(np.zeros((2, 3, 4, 4), np.uint8), [X]))
    ids = InputSpec("ids", ("N", 5), np.int64)
    with pytest.raises(DataError, match=r"array\[0\].*'ids' takes int64 but got float data.*astype"):
        list(as_feeds(np.zeros((2, 5)), [ids]))
    (b,) = as_feeds(np.zeros((1, 5), np.int32), [ids])
    assert b.feeds["ids"].dtype == np.int64
    (b,) = as_feeds(np.zeros((1, 3, 4, 4), np.float64), [X])
    assert b.feeds["x"].dtype == np.float32


def test_nan_and_inf_are_counted_and_located(tmp_path):
    x = rand(4, 3, 4, 4)
    x[2, 0, 1, 1] = np.nan
    x[2, 1, 0, 0] = np.inf
    np.save(tmp_path / "bad.npy", np.concatenate([rand(4, 3, 4, 4), x]))
    with pytest.raises(DataError, match=r"bad\.npy\[4:8\]: input 'x' has 1 NaN and 1 Inf value\(s\) in 1 of "
                       r"4 sample\(s\) \(sample 6; first at index \(6, 0, 1, 1\)\)"):
        list(as_feeds(tmp_path / "bad.npy", [X], batch_size=4))


def test_zero_size_batch_mismatch_and_empty(tmp_path):
    with pytest.raises(DataError, match=r"list\[0\].*'x' is empty"):
        list(as_feeds([np.zeros((3, 0, 4), np.float32)], [X]))
    with pytest.raises(DataError, match=r"list\[0\].*different batch sizes.*'a': 2.*'b': 3"):
        list(as_feeds([(rand(2, 4), np.ones((3, 2), np.int64))], [A, B]))
    with pytest.raises(DataError, match="no samples found in array"):
        as_feeds(np.zeros((0, 3, 4, 4), np.float32), [X])
    with pytest.raises(DataError, match=f"no samples found in {tmp_path}"):
        as_feeds(tmp_path, [X])
    with pytest.raises(DataError, match=r"no samples found in list"):
        list(as_feeds([], [X]))
    with pytest.raises(DataError, match="no such file"):
        as_feeds(tmp_path / "missing.npy", [X])


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    np.save(tmp_path / "ok.npy", rand(3, 4, 4))
    raw = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    (tmp_path / "junk.npz").write_bytes(b"PK not a zip")
    for name in ("trunc.npy", "junk.npy", "junk.npz"):
        with pytest.raises(DataError, match=rf"{name}: cannot read"):
            list(as_feeds(tmp_path / name, [X]))
    folder = tmp_path / "imgs"
    folder.mkdir()
    image(folder / "a.png")
    good = (folder / "a.png").read_bytes()
    (folder / "b.png").write_bytes(good[: len(good) // 2])
    (folder / "c.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    src = as_feeds(folder, [InputSpec("x", ("N", 3, 5, 6), np.float32)], preprocess=SMALL)
    with pytest.raises(DataError, match=r"b\.png: cannot read this image"):
        list(src)


def test_skip_bad_records_and_continues(tmp_path):
    for i in range(5):
        np.save(tmp_path / f"good{i}.npy", rand(3, 4, 4))
    (tmp_path / "junk.npy").write_bytes(b"junk")
    np.save(tmp_path / "nan.npy", np.full((3, 4, 4), np.nan, np.float32))
    np.save(tmp_path / "rank.npy", rand(4, 4))
    src = as_feeds(tmp_path, [X], batch_size=2, skip_bad=True)
    assert sizes(src) == [2, 2, 1]
    assert sorted(s.rsplit("/", 1)[-1] for s, _ in src.skipped) == ["junk.npy", "nan.npy", "rank.npy"]
    assert all(reason for _, reason in src.skipped)
    assert sizes(src) == [2, 2, 1] and len(src.skipped) == 3  # a second pass starts afresh
    x = rand(6, 3, 4, 4)
    x[[1, 4], 0, 0, 0] = np.nan
    src = as_feeds(x, [X], batch_size=3, skip_bad=True)
    assert sizes(src) == [3, 1] and [s for s, _ in src.skipped] == ["array[1]", "array[4]"]
    with pytest.raises(DataError, match="all 1 sample"):
        list(as_feeds([np.full((3, 4, 4), np.nan, np.float32)], [X], skip_bad=True))


# --- labels --------------------------------------------------------------------------------------

def test_labels_from_array_files_and_callable(tmp_path):
    data = [rand(3, 4, 4) for _ in range(4)]
    assert [b.labels.tolist() for b in as_feeds(data, [X], labels=np.arange(4), batch_size=2)] == [[0, 1], [2, 3]]
    np.save(tmp_path / "l.npy", np.array([5, 6, 7, 8]))
    (tmp_path / "l.txt").write_text("5\n6\n7\n8\n")
    for path in (tmp_path / "l.npy", str(tmp_path / "l.txt")):
        (b,) = as_feeds(data, [X], labels=path, batch_size=4)
        assert b.labels.tolist() == [5, 6, 7, 8] and b.labels.dtype.kind == "i"
    src = as_feeds(data, [X], labels=lambda s: int(s[-2]) * 10, batch_size=4)
    assert next(iter(src)).labels.tolist() == [0, 10, 20, 30]
    with pytest.raises(DataError, match="labels hold 2 entries"):
        list(as_feeds(data, [X], labels=np.arange(2)))


def test_image_folder_class_labels_and_callable(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            image(tmp_path / cls / f"{cls}_{i}.jpg")
    spec = InputSpec("x", ("N", 3, 5, 6), np.float32)
    src = as_feeds(tmp_path, [spec], preprocess=SMALL, batch_size=4)
    (b,) = src
    assert b.labels.tolist() == [0, 0, 1, 1] and b.feeds["x"].shape == (4, 3, 5, 6) and len(src) == 1
    (b,) = as_feeds(tmp_path, [spec], preprocess=SMALL, batch_size=4, labels=lambda s: int(s[-5]))
    assert b.labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(DataError, match=r"declared preprocessing.*--preprocess imagenet"):
        as_feeds(tmp_path, [spec])


# --- image preprocessing -----------------------------------------------------------------------

def test_solid_colour_gives_exact_normalised_values():
    v = np.array([200, 100, 50], np.float32)
    pre = ImagePreprocess.imagenet()
    x = pre.apply(Image.new("RGB", (300, 260), tuple(int(c) for c in v)))
    want = (v / 255 - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x.reshape(3, -1), np.repeat(want[:, None], 224 * 224, 1), rtol=1e-6)
    bgr = ImagePreprocess(resize=None, crop=None, channel_order="BGR", layout="NHWC").apply(
        Image.new("RGB", (4, 3), (200, 100, 50)))
    assert bgr.shape == (3, 4, 3)
    np.testing.assert_allclose(bgr[0, 0], (v[::-1] / 255 - np.array(pre.mean)) / np.array(pre.std), rtol=1e-6)
    gray = ImagePreprocess(resize=None, crop=None, channel_order="GRAY", mean=(0.5,), std=(0.5,))
    assert gray.apply(Image.new("RGB", (4, 3), (255, 255, 255))).tolist() == [[[1.0] * 4] * 3]


def test_resize_crop_shapes_and_apply_array():
    img = Image.new("RGB", (300, 200))  # shorter side 200 -> 256, so 384 x 256, then crop
    assert ImagePreprocess(crop=None).apply(img).shape == (3, 256, 384)
    assert ImagePreprocess(crop=(200, 100)).apply(img).shape == (3, 200, 100)
    assert ImagePreprocess(resize=None, crop=100, layout="NHWC").apply(img).shape == (100, 100, 3)
    assert ImagePreprocess().apply_array(np.zeros((20, 30, 3), np.uint8)).shape == (3, 224, 224)
    with pytest.raises(DataError, match="uint8"):
        ImagePreprocess().apply_array(np.zeros((20, 30, 3), np.float32))
    with pytest.raises(DataError, match="smaller than the crop"):
        ImagePreprocess(resize=None).apply(img)


def test_preprocess_parse_and_validation():
    assert ImagePreprocess.parse("imagenet") == ImagePreprocess.imagenet()
    p = ImagePreprocess.parse("resize=128,crop=112,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,layout=NHWC,"
                              "channel_order=BGR,scale=0.00392")
    assert (p.resize, p.crop, p.mean, p.layout, p.channel_order, p.scale) == (
        128, 112, (0.5, 0.5, 0.5), "NHWC", "BGR", 0.00392)
    assert ImagePreprocess.parse("crop=224x192,resize=none,scale=1/255").crop == (224, 192)
    with pytest.raises(ConfigError, match="unknown preprocessing key 'sclae'.*Did you mean 'scale'"):
        ImagePreprocess.parse("sclae=1")
    for bad in (dict(resize=0), dict(crop=300), dict(scale=-1.0), dict(mean=(0.1, 0.2)),
                dict(std=(0.0,)), dict(layout="NCWH"), dict(channel_order="RBG"), dict(dtype=np.int32)):
        with pytest.raises(ConfigError):
            ImagePreprocess(**bad)
    with pytest.raises(ConfigError, match="Did you mean 'NCHW'"):
        ImagePreprocess(layout="NCWH")


# --- ONNX input specs ----------------------------------------------------------------------------

def test_specs_from_onnx_skips_initializers():
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0] * 4)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, None, 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 7]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    specs = specs_from_onnx(helper.make_model(graph))
    assert specs == [InputSpec("x", ("batch", 3, None, 4), np.dtype(np.float32)),
                     InputSpec("ids", (1, 7), np.dtype(np.int64))]
    assert specs[0].describe_shape() == "(batch, 3, ?, 4)"
    assert specs[1].describe_shape() == "(1, 7)"


def test_evaluation_data_the_model_cannot_take_fails_before_calibration(small_model_path, calib_arrays):
    """Wrong input names or labels in the held-out data are found before calibration starts (the
    first evaluation batch is read up front), not after minutes of calibrating and emitting."""
    import lowbit

    stages = []
    progress = lambda stage, done, total: stages.append(stage)  # noqa: E731
    wrong = {"not_an_input": np.stack(calib_arrays[:4])}
    with pytest.raises(DataError, match="unknown input name 'not_an_input'"):
        lowbit.quantize(str(small_model_path), "int8", calib_arrays, eval_data=wrong, verify=None, progress=progress)
    assert "prepare" in stages and "calibrate" not in stages and "emit" not in stages, stages
    with pytest.raises(DataError, match="labels hold 3 entries"):
        lowbit.quantize(str(small_model_path), "int8", calib_arrays, eval_data=np.stack(calib_arrays[:8]), labels=[0, 1, 2],
                        verify=None)
