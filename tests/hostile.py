"""Hostile inputs, made by the tests themselves: each file with the message lowbit must give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inits=(), inputs=None, outputs=None, domains=()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph(nodes, "hostile", inputs or [x], outputs or [y], list(inits))
    ops = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(g, opset_imports=ops)


def make_hostile_models(folder: Path, good_model: Path) -> dict[str, tuple[Path, str]]:
    """{case: (path, regex the error message must match)}."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, str]] = {}

    def save(name: str, model: onnx.ModelProto | bytes, pattern: str) -> None:
        p = folder / f"{name}.onnx"
        p.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
        cases[name] = (p, pattern)

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    for name, loc in (("traversal", "../../etc/passwd"), ("absolute", "/etc/passwd")):
        t = onnx.TensorProto()
        t.CopyFrom(w)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=loc)
        save(f"external_{name}", _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [t]),
             "outside the model's folder")
    huge = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100000, 100000, 10], raw_data=b"\x00" * 100)
    save("huge_declared_shape", _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [huge]),
         "declares|far beyond")
    save("cycle", _model([helper.make_node("Relu", ["b"], ["a"], name="r1"),
                          helper.make_node("Relu", ["a"], ["b"], name="r2"),
                          helper.make_node("Add", ["x", "b"], ["y"], name="add")]), "cycle")
    save("dangling_input", _model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")]), "ghost")
    save("duplicate_names", _model([helper.make_node("Relu", ["x"], ["a"], name="same"),
                                    helper.make_node("Relu", ["a"], ["y"], name="same")]), "named 'same'")
    save("unknown_domain", _model([helper.make_node("Frobnicate", ["x"], ["y"], name="f", domain="evil.corp")]),
         "domain 'evil.corp'")
    good = good_model.read_bytes()
    save("truncated", good[: len(good) // 3], "truncated|corrupt|not an ONNX|declares|needs")
    flipped = bytearray(good)
    for i in range(50, len(flipped), max(1, len(flipped) // 40)):
        flipped[i] ^= 0xFF
    save("bit_flips", bytes(flipped), "truncated|corrupt|not an ONNX|declares|needs|checker|cannot load|opset|domain")
    text = folder / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    cases["text_file"] = (text, "not an ONNX model")
    return cases


def make_hostile_data(folder: Path) -> dict[str, tuple[Path, str]]:
    """Calibration data for a model taking x: (N, 3, 32, 32) float32."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, str]] = {}
    good = np.zeros((1, 3, 32, 32), np.float32)

    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    np.save(folder / "nan.npy", nan)
    cases["nan"] = (folder / "nan.npy", "NaN")
    np.save(folder / "ints.npy", good.astype(np.int32))
    cases["wrong_dtype"] = (folder / "ints.npy", "int")
    np.save(folder / "empty.npy", np.zeros((0, 3, 32, 32), np.float32))
    cases["zero_size"] = (folder / "empty.npy", "zero|empty|no samples")
    np.save(folder / "full.npy", good)
    (folder / "truncated.npy").write_bytes((folder / "full.npy").read_bytes()[:100])
    cases["truncated_npy"] = (folder / "truncated.npy", "truncated.npy")
    np.save(folder / "nhwc.npy", np.zeros((1, 32, 32, 3), np.float32))
    cases["wrong_layout"] = (folder / "nhwc.npy", "NHWC|transpose")
    imgs = folder / "corrupt_images"
    imgs.mkdir(exist_ok=True)
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 10)
    cases["corrupt_image"] = (imgs, "broken.jpg")
    return cases
