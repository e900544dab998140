"""Any real model: names lowbit makes never clash with the model's (ONNX keeps node and tensor
names apart, so a node `fc` may read a weight `fc`), old opsets are raised and checked, weights held
in Constant nodes are quantized, and tensors whose type shape inference lost are typed."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.api import VerifyOptions
from lowbit.errors import ModelError
from lowbit.onnx.names import Names, model_names
from lowbit.onnx.session import session

PRESETS = ("int8", "int8-fast", "w4a8", "fp16", "int8-dynamic")
QUICK = VerifyOptions(threads=(), parity_batches=2)


def _convnet(opset: int = 17, names: dict[str, str] | None = None, constant_weights: bool = False) -> onnx.ModelProto:
    """x -> Conv -> Relu -> Add(skip Conv) -> Flatten -> Gemm -> y. `names` renames nodes / tensors;
    `constant_weights` holds the weights in Constant nodes (as Paddle exports do)."""
    n = {k: k for k in ("x", "w", "b", "w2", "b2", "fc", "fcb", "c", "r", "c2", "s", "flat", "y",
                        "conv", "relu", "conv2", "add", "flatten", "gemm")}
    n.update(names or {})
    rng = np.random.default_rng(0)
    weights = {n["w"]: rng.normal(size=(8, 3, 3, 3)) * 0.3, n["b"]: rng.normal(size=8) * 0.1,
               n["w2"]: rng.normal(size=(8, 8, 3, 3)) * 0.2, n["b2"]: rng.normal(size=8) * 0.1,
               n["fc"]: rng.normal(size=(4, 8 * 8 * 8)) * 0.05, n["fcb"]: rng.normal(size=4) * 0.1}
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    nodes = [helper.make_node("Conv", [n["x"], n["w"], n["b"]], [n["c"]], name=n["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [n["c"]], [n["r"]], name=n["relu"]),
             helper.make_node("Conv", [n["r"], n["w2"], n["b2"]], [n["c2"]], name=n["conv2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", [n["r"], n["c2"]], [n["s"]], name=n["add"]),
             helper.make_node("Flatten", [n["s"]], [n["flat"]], name=n["flatten"]),
             helper.make_node("Gemm", [n["flat"], n["fc"], n["fcb"]], [n["y"]], name=n["gemm"], transB=1)]
    inits = tensors
    if constant_weights:
        nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in tensors] + nodes
        inits = []
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n["x"], TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info(n["y"], TensorProto.FLOAT, ["N", 4])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m


def _data(n: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(3, 8, 8)).astype(np.float32) for _ in range(n)]


def _check_runs(model: onnx.ModelProto, preset: str, verify=QUICK) -> lowbit.QuantResult:
    data = _data()
    r = lowbit.quantize(model, preset, data, verify=verify)
    onnx.checker.check_model(r.model)
    x = np.stack(data[:8])
    feeds_name = model.graph.input[0].name
    y = session(r.model).run(None, {feeds_name: x})[0]
    ref = session(model).run(None, {feeds_name: x})[0]
    assert y.shape == ref.shape
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.98, preset
    if verify is not None:
        q = r.report.data["variants"][1]
        if q.get("parity") is not None:
            assert q["parity"]["passed"], (preset, q["parity"])
    return r


def test_names_are_fresh_against_every_namespace():
    m = _convnet(names={"gemm": "fc", "c": "x__float_ref"})
    names = Names(m)
    assert {"fc", "x__float_ref", "conv", "w"} <= model_names(m)
    assert names.fresh("fc") == "fc_1" and names.fresh("fc") == "fc_2"
    assert names.fresh("new") == "new"            # free names are kept as asked (byte-identical files)
    p = names.fresh_prefix("w", ["_w8", "_s"])
    assert p == "w" and names.fresh_prefix("w", ["_w8"]) == "w_1"


@pytest.mark.parametrize("preset", PRESETS)
def test_node_named_like_its_weight(preset):
    """A Gemm node `fc` reading initializer `fc` (legal: separate namespaces) crashed int8 with
    'Duplicate definition of name (fc__float_ref)'."""
    _check_runs(_convnet(names={"gemm": "fc", "conv": "w", "conv2": "b2"}), preset)


# names that are exactly what lowbit would derive from another name (x__float_ref, r_q, r_s, ...)
_SUFFIXES = ("__float_ref", "__quant_error", "__forced", "_fq_clip", "_q", "_dq", "_s", "_z", "_w8", "_f16",
             "_cast", "_8bit", "_fq_scale", "_fq_div", "_matmul", "_bias", "_nb", "_nbs", "__1", "_smooth")


@pytest.mark.parametrize("seed", range(4))
def test_name_clash_fuzz(seed):
    rng = np.random.default_rng(seed)
    tensors = ["x", "w", "b", "w2", "b2", "fc", "fcb", "c", "r", "c2", "s", "flat", "y"]
    nodes = ["conv", "relu", "conv2", "add", "flatten", "gemm"]
    names: dict[str, str] = {}
    # nodes take tensor names; free tensors take lowbit's derived names of other tensors
    for node in nodes:
        if rng.random() < 0.7:
            names[node] = str(rng.choice(tensors))
    for t in ("c", "r", "c2", "s", "flat"):
        if rng.random() < 0.6:
            names[t] = str(rng.choice(["r", "s", "c", "x", "fc", "w"])) + str(rng.choice(_SUFFIXES))
    taken = set()
    for k in list(names):  # keep node names unique and tensor names unique (each namespace)
        pool = nodes if k in nodes else tensors
        if names[k] in taken or (names[k] in pool and names[k] != k) or names[k] in tensors and k in tensors:
            del names[k]
        else:
            taken.add(names[k])
    m = _convnet(names=names)
    for preset in ("int8", "int8-fast", "w4a8", "fp16", "int8-dynamic"):
        _check_runs(m, preset)


def test_suffix_named_tensor_through_bias_correction():
    # a tensor literally named as the bias correction's reference of another layer's output
    m = _convnet(names={"c": "conv2__float_ref", "c2": "gemm__quant_error", "r": "r_q"})
    _check_runs(m, "int8")


@pytest.mark.parametrize("opset", [11, 12])
@pytest.mark.parametrize("constant_weights", [False, True])
def test_old_opsets_every_preset(opset, constant_weights):
    m = _convnet(opset=opset, constant_weights=constant_weights)
    for preset in PRESETS:
        r = _check_runs(m, preset)
        assert next(i.version for i in r.model.opset_import if i.domain == "") >= 13
        if preset in ("int8", "int8-fast"):  # Constant-node weights are found and quantized
            assert r.plan.nodes["conv"].precision == "int8" and r.plan.nodes["gemm"].precision == "int8"


def test_constant_weights_are_lifted_without_optimizer():
    from lowbit.load.model import load_model
    from lowbit.load.prepare import prepare

    prepared = prepare(load_model(_convnet(constant_weights=True)), optimize=False)
    assert not [n for n in prepared.proto.graph.node if n.op_type == "Constant"]
    assert {"w", "fc"} <= {t.name for t in prepared.proto.graph.initializer}


def test_failed_conversion_names_the_op(monkeypatch):
    def fail(model, target):
        raise RuntimeError("No Adapter For Gemm from 12 to 13")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    with pytest.raises(ModelError, match=r"opset 12.*Gemm"):
        lowbit.quantize(_convnet(opset=12), "fp16", verify=None)


def test_conversion_that_changes_outputs_is_refused(monkeypatch):
    real = onnx.version_converter.convert_version

    def wrong(model, target):
        out = real(model, target)
        next(n for n in out.graph.node if n.op_type == "Relu").op_type = "Sigmoid"
        return out

    monkeypatch.setattr(onnx.version_converter, "convert_version", wrong)
    with pytest.raises(ModelError, match="output 'y' changed"):
        lowbit.quantize(_convnet(opset=12), "fp16", verify=None)


def test_types_lost_by_shape_inference_are_recovered():
    """A com.microsoft op stops ONNX's shape inference; ONNX Runtime still types what follows."""
    from lowbit.onnx.graph import GraphIndex
    from lowbit.load.model import load_model
    from lowbit.load.prepare import prepare

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(128, 64)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")]
    nodes = [helper.make_node("FastGelu", ["x"], ["g"], name="gelu", domain="com.microsoft"),
             helper.make_node("Reshape", ["g", "shape"], ["flat"], name="reshape"),
             helper.make_node("Shape", ["flat"], ["s"], name="shape_of"),
             helper.make_node("Gemm", ["flat", "w"], ["y"], name="gemm", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 128]),
                               helper.make_tensor_value_info("s", TensorProto.INT64, [2])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    g = GraphIndex(prepare(load_model(m), optimize=False).proto)
    assert g.is_float("g") and g.is_float("flat") and not g.is_float("s")
    data = [rng.normal(size=64).astype(np.float32) for _ in range(32)]
    r = lowbit.quantize(m, "int8-fast", data, verify=None)
    assert r.plan.nodes["gemm"].precision == "int8" and "flat" in r.plan.tensors


def _zoo_model(name: str) -> Path | None:
    found = sorted(glob.glob(str(Path(__file__).parent.parent / ".cache/zoo/models" / name / "*.onnx")))
    return Path(found[0]) if found else None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppocrv4-rec", "ddddocr-ocr"])
@pytest.mark.parametrize("preset", ["int8-fast", "fp16"])
def test_real_old_opset_ocr_models_through_cli(tmp_path, name, preset):
    from lowbit.cli.commands import main

    path = _zoo_model(name)
    calib = Path(__file__).parent.parent / ".cache/zoo/runs" / name / "calib.npz"
    if path is None or not calib.exists():
        pytest.skip(f"{name} is not in .cache/zoo (python -m benchmarks.zoo.run --models {name} fetches it)")
    out = tmp_path / "q.onnx"
    before = path.read_bytes()
    assert main(["quantize", str(path), "--precision", preset, "--calib", str(calib), "-o", str(out),
                 "--no-verify"]) == 0
    assert path.read_bytes() == before  # the user's file is untouched
    q = onnx.load(str(out))
    assert next(i.version for i in q.opset_import if i.domain == "") >= 13
    session(q)  # ONNX Runtime loads it


def test_old_model_that_cannot_run_on_made_up_inputs_loads_quietly(tmp_path, capfd):
    """The upgrade check runs the original on random inputs (free dims 64); a model that only runs at
    its real sizes (PP-OCRv3 rec: a Concat needs the width the pipeline feeds) is checked by loading
    alone, and ONNX Runtime must not print an ERROR line for that expected failure."""
    from lowbit.load.model import load_model

    fixed = numpy_helper.from_array(np.ones((1, 3, 8), np.float32), "c")
    graph = helper.make_graph([helper.make_node("Concat", ["x", "c"], ["y"], axis=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, "w"])], [fixed])
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    loaded = load_model(str(path))
    assert loaded.proto.opset_import[0].version >= 13
    assert "onnxruntime" not in capfd.readouterr().err
