"""The API reference builds offline from the docstrings (pdoc), with no warnings, no backticked
`lowbit.…` name that resolves to nothing, and a docstring for every name in `lowbit.__all__`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_api_docs.py"

pytest.importorskip("pdoc", reason="pdoc is in the test extra: pip install -e '.[test]'")


def _script():
    spec = importlib.util.spec_from_file_location("build_api_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_api_reference_builds_clean(tmp_path):
    # the CI entry point, in a fresh interpreter (pdoc imports every public module)
    out = tmp_path / "api"
    done = subprocess.run(["bash", str(REPO / "scripts" / "build_api_docs.sh"), str(out)], cwd=REPO,
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "(0 problems)" in done.stderr
    page = (out / "lowbit.html").read_text()
    for name in ("quantize", "QuantConfig", "evaluate", "ImagePreprocess"):
        assert f'id="{name}"' in page, name
    assert (out / "lowbit" / "calibration.html").is_file() and (out / "lowbit" / "metrics.html").is_file()


@pytest.mark.slow
def test_public_names_have_docstrings_and_references_resolve():
    b = _script()
    assert b.undocumented_public() == []
    assert b.broken_references() == []


def test_reference_check_catches_a_dangling_name():
    b = _script()
    assert b.resolves("lowbit.quantize") and b.resolves("lowbit.calibration")
    assert b.resolves("lowbit.data.stateful.stateful_feeds")
    assert not b.resolves("lowbit.no_such_module.thing")
    assert not b.resolves("lowbit.api.no_such_function")
    assert b.REFERENCE.findall("see `lowbit.recover.Recover(budget)` and `lowbit.data.axes`.") == [
        "lowbit.recover.Recover", "lowbit.data.axes"]


def test_public_modules_cover_the_package_surface():
    mods = _script().public_modules()
    assert mods[0] == "lowbit"
    for m in ("lowbit.calibration", "lowbit.algorithms", "lowbit.metrics", "lowbit.data", "lowbit.progress"):
        assert m in mods
    assert len(mods) == len(set(mods))
