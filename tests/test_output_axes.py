"""Each output's batch axis found at run time, so time-major heads (ddddocr's (T, 1, C) logits under a
declared `[1, seqlen]`) are cut per sample correctly; CTC read from raw per-step scores by their blank;
a report that cannot tell the task names the --metric to pass."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lowbit.data import Batch
from lowbit.data.axes import output_batch_axis
from lowbit.metrics import METRICS
from lowbit.metrics.ctc import ctc_greedy
from lowbit.metrics.infer import choose_metrics, ctc_blank
from lowbit.verify import compare_models


def test_output_batch_axis_by_hand():
    assert output_batch_axis((20, 1, 8210), 1) == 1          # time-major, one sample: the length-1 axis
    assert output_batch_axis((1, 20, 37), 1) == 0
    assert output_batch_axis((8, 22, 2100), 8) == 0
    assert output_batch_axis((20, 4, 37), 4) == 1
    assert output_batch_axis((1, 1, 128), 64) is None         # a final LSTM state: one sample for the batch
    # T == B: only the batch's first sample alone tells which axis holds the samples
    assert output_batch_axis((6, 6, 5), 6) == 0
    assert output_batch_axis((6, 6, 5), 6, single=(6, 1, 5)) == 1
    assert output_batch_axis((6, 6, 5), 6, single=(1, 6, 5)) == 0


def _time_major_model(t: int, c: int) -> bytes:
    """x (B, T, C) -> y = transpose -> (T, B, C), as a CTC head exported from torch returns it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", t, c])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)   # undeclared, as exporters leave it
    g = helper.make_graph([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0, 2])], "tm", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m.SerializeToString()


def test_time_major_output_with_batch_equal_to_steps_is_cut_per_sample():
    t, c = 6, 5
    x = np.random.default_rng(0).normal(size=(2 * t, t, c)).astype(np.float32)
    model = _time_major_model(t, c)
    batches = [Batch({"x": x[i:i + t]}, None, f"x[{i}]") for i in (0, t)]   # batch size == T
    accs, seen = compare_models(model, {"same": model}, batches, collect=True)
    ref = accs["same"].reference.stacked()["y"]
    assert seen == 2 and ref.shape == (2 * t, t, c)
    np.testing.assert_array_equal(ref, x)   # sample i is x[i], not step i of every sample
    np.testing.assert_array_equal(accs["same"].outputs.stacked()["y"], x)


def test_ctc_read_from_raw_scores_by_their_blank():
    rng = np.random.default_rng(1)
    n, t, c = 8, 20, 50
    ids = np.where(rng.uniform(size=(n, t)) < 0.7, 0, rng.integers(1, c, (n, t)))   # blank at 70% of steps
    logits = rng.normal(size=(n, t, c)) + 8 * np.eye(c)[ids]                          # raw scores, not softmax
    assert ctc_blank(logits)[0] == 0
    choices = choose_metrics({"387": logits})
    assert [ch.name for ch in choices][:2] == ["ctc-exact", "ctc-cer"] and "blank 0" in choices[0].reason
    last = choose_metrics({"out": logits[:, :, ::-1].copy()})[0]                     # blank as the last class
    assert last.name == "ctc-exact" and last.metric.blank == c - 1
    # log-probabilities per step are CTC whatever their blank does
    logp = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
    assert choose_metrics({"lp": logp})[0].name == "ctc-exact"
    # hidden states (no class winning a third of the positions) are not read as text
    assert ctc_blank(rng.normal(size=(n, t, 384))) is None
    generic = choose_metrics({"hidden": rng.normal(size=(n, t, 384))})[0]
    assert generic.name == "sqnr" and "--metric ctc-exact" in generic.reason


def test_ctc_decodes_a_time_major_sample():
    onehot = np.eye(4)[[0, 2, 2, 0, 1, 1]]                # "2 1"
    assert ctc_greedy(onehot[:, None, :]) == ctc_greedy(onehot) == [2, 1]
    ref = onehot[None, :, None, :]                        # (N, T, 1, C)
    cand = np.eye(4)[[0, 2, 0, 2, 1, 0]][None, :, None, :]  # "2 2 1"
    assert METRICS.create("ctc-exact").score(ref, ref) == 1.0
    assert METRICS.create("ctc-exact").score(ref, cand) == 0.0
    with pytest.raises(ValueError, match="CTC sample"):
        ctc_greedy(np.zeros((3, 2, 4)))


def test_every_map_output_gets_the_headline_metric():
    rng = np.random.default_rng(2)
    maps = {k: rng.uniform(0, 1, (3, 172, w)) for k, w in (("notes", 88), ("onsets", 88), ("contour", 264))}
    names = [(ch.name, ch.outputs) for ch in choose_metrics(maps)]
    assert names[:3] == [("mask-iou", ("notes",)), ("mask-iou", ("onsets",)), ("mask-iou", ("contour",))]
    assert ("sqnr", ("contour",)) in names


def test_a_sigmoid_map_rounded_past_one_is_still_a_probability_map():
    maps = np.random.default_rng(3).uniform(0, 1, (2, 1, 32, 32)).astype(np.float32)
    maps[0, 0, 0, 0] = np.float32(1.0000001)   # PP-OCRv4 det's FP32 sigmoid reaches this
    assert choose_metrics({"sigmoid_0.tmp_0": maps})[0].name == "mask-iou"
