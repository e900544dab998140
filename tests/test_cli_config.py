"""Everything `lowbit list` names is selectable from the CLI and reaches the plan; --config files
round-trip a preset byte-identically; bad keys and values name the valid ones."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lowbit.algorithms import ALGORITHMS
from lowbit.calibration import CALIBRATIONS
from lowbit.cli.commands import main
from lowbit.presets import PRESETS, preset
from lowbit.cli.config_file import config_from_dict, config_to_toml, load_config
from lowbit.errors import ConfigError
from lowbit.target.cpu import TARGETS
from lowbit.metrics import METRICS


@pytest.fixture()
def calib_file(tmp_path, calib_arrays):
    path = tmp_path / "calib.npy"
    np.save(path, np.stack(calib_arrays[:8]))
    return path


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))  # layer costs: measured once per test


def _plan(tmp_path, model, calib, *flags, name="p") -> dict:
    plan = tmp_path / f"{name}.plan.json"
    code = main(["quantize", str(model), "--calib", str(calib), "-o", str(tmp_path / f"{name}.onnx"),
                 "--no-verify", "--save-plan", str(plan), "-q", *flags])
    assert code == 0, flags
    return json.loads(plan.read_text())


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_round_trips_through_toml(name):
    import tomllib

    text = config_to_toml(preset(name), name)
    config, extras = config_from_dict(tomllib.loads(text))
    assert config == preset(name) and extras == {"metric": None, "recover": None}
    body = {k: v for k, v in tomllib.loads(text).items() if k != "preset"}  # every key written out
    assert config_from_dict(body)[0] == preset(name)


def test_print_config_file_gives_byte_identical_model(small_model_path, calib_file, tmp_path, capsys):
    assert main(["quantize", "--print-config", "--preset", "int8"]) == 0
    (tmp_path / "int8.toml").write_text(capsys.readouterr().out)
    common = [str(small_model_path), "--calib", str(calib_file), "--no-verify", "-q"]
    assert main(["quantize", *common, "--preset", "int8", "-o", str(tmp_path / "a.onnx")]) == 0
    assert main(["quantize", *common, "--config", str(tmp_path / "int8.toml"), "-o", str(tmp_path / "b.onnx")]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_each_calibration_method_reaches_the_plan(small_model_path, calib_file, tmp_path):
    for name, cls in CALIBRATIONS.items():
        plan = _plan(tmp_path, small_model_path, calib_file, "--preset", "int8-fast", "--calibration", name, name=name)
        assert plan["config"]["activations"]["calibration"]["name"] == name
    plan = _plan(tmp_path, small_model_path, calib_file, "--preset", "int8-fast", "--calibration", "percentile:99.9")
    # the level given is one of those the clipping choice tries (lowbit.plan.clipping)
    assert "99.9" in plan["config"]["activation_clipping"]["levels"]


def test_each_algorithm_reaches_the_plan(small_model_path, calib_file, tmp_path, monkeypatch):
    # options that keep the small model's runs short; the names are what the test is about
    spec = {"adaround": "adaround:iterations=20", "keep-if-better": "keep-if-better:gptq"}
    for name in ALGORITHMS.names():
        flag = spec.get(name, name.replace("_", "-"))  # either spelling selects it
        plan = _plan(tmp_path, small_model_path, calib_file, "--preset", "int8-fast", "--objective", "size",
                     "--algorithms", flag, name=name)
        assert [a["name"] for a in plan["config"]["algorithms"]] == [name], name
    plan = _plan(tmp_path, small_model_path, calib_file, "--preset", "int8", "--algorithms", "none", name="none")
    assert plan["config"]["algorithms"] == []


def test_targets_objectives_and_presets_reach_the_plan(small_model_path, calib_file, tmp_path):
    for target in TARGETS:
        plan = _plan(tmp_path, small_model_path, calib_file, "--preset", "int8-fast", "--target", target, name=target)
        assert plan["config"]["target"] == target
    plan = _plan(tmp_path, small_model_path, calib_file, "--preset", "int8-fast", "--objective", "size", name="size")
    assert plan["config"]["objective"] == "size"
    for name in PRESETS:
        plan = _plan(tmp_path, small_model_path, calib_file, "--preset", name, "--algorithms", "none", name=name)
        # int4 is a static plan whose MatMul / Gemm layers are blocks (lowbit.plan.int4_recipe)
        assert plan["precision"] == ("int8" if name == "int4" else preset(name).precision)
        if plan["precision"] == "int8":  # fp16 / dynamic plans are read back from the model they made
            assert plan["config"]["weights"]["dtype"] == preset(name).weights.dtype.name


def test_each_metric_reaches_the_quantize_call(small_model_path, calib_file, tmp_path, monkeypatch):
    import lowbit

    seen = []

    def fake_quantize(*args, metric=None, **kwargs):
        seen.append(metric)
        raise ConfigError("stop here")

    monkeypatch.setattr(lowbit, "quantize", fake_quantize)
    for name in METRICS.names():
        main(["quantize", str(small_model_path), "--calib", str(calib_file), "-o", str(tmp_path / "m.onnx"),
              "--metric", name])
        assert seen[-1].name == name
    (tmp_path / "c.toml").write_text('preset = "int8-fast"\nmetric = "top5-agreement"\n')
    main(["quantize", str(small_model_path), "--calib", str(calib_file), "-o", str(tmp_path / "m.onnx"),
          "--config", str(tmp_path / "c.toml")])
    assert seen[-1] == "top5-agreement"


def test_recover_from_the_flag_or_the_file_reaches_the_quantize_call(small_model_path, calib_file, tmp_path,
                                                                     monkeypatch, capsys):
    import lowbit

    pytest.importorskip("torch")
    seen = []

    def fake_quantize(*args, recover=None, **kwargs):
        seen.append(recover)
        raise ConfigError("stop here")

    monkeypatch.setattr(lowbit, "quantize", fake_quantize)
    base = ["quantize", str(small_model_path), "--calib", str(calib_file), "-o", str(tmp_path / "m.onnx")]
    main([*base, "--recover", "90s"])
    assert seen[-1].budget == "90s"
    capsys.readouterr()
    assert main(["quantize", "--print-config", "--preset", "int8", "--recover", "500steps"]) == 0
    (tmp_path / "r.toml").write_text(capsys.readouterr().out)
    main([*base, "--config", str(tmp_path / "r.toml")])
    assert seen[-1].budget == "500steps" and seen[-1].holdout == 0.2
    assert main([*base, "--recover", "ten minutes"]) == 2
    assert "'10m'" in capsys.readouterr().err


def test_list_names_a_selector_for_every_entry():
    out = subprocess.run([sys.executable, "-m", "lowbit.cli", "list"], capture_output=True, text=True,
                         check=True).stdout  # piped: nothing may be cut
    assert "Range = [min, max] of everything seen" in out
    assert max(len(line) for line in out.splitlines()) <= 100
    for name in PRESETS:
        assert f"--preset {name}" in out
    for name in CALIBRATIONS.names():
        assert f"--calibration {name}" in out
    for name in ALGORITHMS.names():
        assert f"--algorithms {name}" in out
    for name in TARGETS:
        assert f"--target {name}" in out
    for name in METRICS.names():
        assert f"--metric {name}" in out


@pytest.mark.parametrize("text, expected", [
    ('algoritms = []', "Did you mean 'algorithms'"),
    ('[activations]\ncalibration = "percentil"', "Did you mean 'percentile'"),
    ('[[algorithms]]\nname = "gptq"\npercdam = 0.1', "Did you mean 'percdamp'"),
    ('[[algorithms]]\nname = "gptq"\npercdamp = "a lot"', "is a number such as 0.01"),
    ('target = "avx3"', "Did you mean 'avx2'"),
    ('[weights]\ngranularity = "per_row"', "per_tensor, per_channel, per_group"),
    ('preset = "int9"', "Did you mean 'int8'"),
    ('metric = "top1-agreemnt"', "top1-agreement"),
    ('precision = ', "not valid TOML"),
])
def test_bad_config_names_what_is_valid(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")) as e:
        load_config(path)
    assert str(path) in str(e.value) or "unknown" in str(e.value)


def test_bad_flags_exit_2_with_one_paragraph(small_model_path, calib_file, tmp_path, capsys):
    base = ["quantize", str(small_model_path), "--calib", str(calib_file), "-o", str(tmp_path / "m.onnx")]
    assert main([*base, "--calibration", "percentile:lots"]) == 2
    assert "is a number such as 99.99" in capsys.readouterr().err
    assert main([*base, "--algorithms", "cle,bias-corection"]) == 2
    assert "Did you mean 'bias_correction'" in capsys.readouterr().err
    assert main([*base, "--algorithms", "keep-if-better"]) == 2
    assert "keep-if-better:gptq" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
