"""Shared fixtures: small real-structure ONNX models built in torch, and data for them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import lowbit.api  # before torch, as the CLI does (lowbit sets OpenMP's spin count before torch loads)
import lowbit.stages.emit
from lowbit.target.latency_choice import estimate_ratio
from lowbit.target.model_speed import ModelSpeed

import torch  # noqa: E402


class SmallConvNet(torch.nn.Module):
    """Conv-BN-ReLU6, depthwise, residual add, pooling and a linear head: the ops of MobileNetV2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU6())
        self.dw = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16), torch.nn.BatchNorm2d(16),
                                      torch.nn.ReLU6())
        self.pw = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 1), torch.nn.BatchNorm2d(16))
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.pw(self.dw(y))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def _init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def small_model_path(tmp_path_factory) -> Path:
    """An ONNX file of SmallConvNet (seeded weights, BN folded by the exporter)."""
    torch.manual_seed(0)
    model = _init(SmallConvNet(), 0)
    path = tmp_path_factory.mktemp("models") / "small.onnx"
    from lowbit.load.model import export_torch

    path.write_bytes(export_torch(model, torch.zeros(1, 3, 32, 32)).SerializeToString())
    return path


@pytest.fixture(scope="session")
def small_model_torch() -> torch.nn.Module:
    torch.manual_seed(0)
    return _init(SmallConvNet(), 0)


def image_like(n: int, seed: int, size: int = 32) -> list[np.ndarray]:
    """Smooth random images (not white noise): closer to real activations statistics."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.normal(size=(3, size // 4, size // 4)).astype(np.float32)
        out.append(np.kron(low, np.ones((4, 4), np.float32)) + 0.1 * rng.normal(size=(3, size, size)).astype(np.float32))
    return out


@pytest.fixture(scope="session")
def calib_arrays() -> list[np.ndarray]:
    return image_like(24, seed=1)


@pytest.fixture(scope="session")
def eval_arrays() -> list[np.ndarray]:
    return image_like(16, seed=2)


class TinyStem(torch.nn.Module):
    """A first convolution with 0.3% of the weights, as in real CNNs (early-layer rules)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.body = torch.nn.Conv2d(4, 64, 3, padding=1)
        self.head = torch.nn.Linear(64, 512)

    def forward(self, x):
        return self.head(torch.relu(self.body(torch.relu(self.stem(x)))).mean(dim=(2, 3)))


def scripted_search(plan, penalty: dict[str, dict[str, float]]):
    """(evaluator, ranking) for search tests: the metric is 1 minus each penalised layer's penalty
    for its precision; the ranking puts the penalised layers first."""
    from lowbit.search.evaluate import Score
    from lowbit.search.mixed import layer_nodes
    from lowbit.search.sensitivity import LayerSensitivity

    class Scripted:
        def score(self, p):
            return Score(1.0 - sum(v.get(p.nodes[n].precision, 0.0) for n, v in penalty.items()), 30.0)

    ranking = [LayerSensitivity(n, plan.nodes[n].op, 0.5, 10.0, 0.9 if n in penalty else 0.5, 20.0)
               for n in layer_nodes(plan)]
    return Scripted(), ranking


def pytest_configure(config) -> None:
    """LOWBIT_TEST_CPU=avx2|vnni plans as that CPU would (the weight grids; ONNX Runtime still runs
    this machine's kernels): a run that shows, on a VNNI machine, which tests assume a VNNI grid."""
    forced = os.environ.get("LOWBIT_TEST_CPU")
    if forced:
        import lowbit.target.cpu as hardware

        traits = hardware.TARGETS[forced]
        hardware.this_cpu = lambda: traits


def pytest_report_header(config) -> str:
    """Which CPU's integer kernels this run checks: tests whose numbers depend on it pin `target=`."""
    from lowbit.target.cpu import this_cpu

    return f"lowbit CPU: {this_cpu().describe()}"


# The suite runs on pytest-xdist workers (pyproject's addopts: `-n auto --dist loadfile`): one per
# core, at most MAX_WORKERS (each real-model test holds up to a few GB). `-n 0` runs it in one process.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))



def _as_fast_as_fp32(*_args) -> ModelSpeed:
    return ModelSpeed(estimate_ratio([1.0] * 8, [1.0] * 8))


@pytest.fixture(autouse=True)
def _whole_model_speed_pinned(monkeypatch):
    """Whether a whole static-INT8 model runs slower than FP32 depends on the CPU, and decides the
    plan (lowbit.target.model_speed): in-process tests pin it to 'as fast' so that their plans are the
    same on every machine. tests/test_model_speed.py replaces it with the timings it tests."""
    monkeypatch.setattr(lowbit.stages.emit, "whole_model_speed", _as_fast_as_fp32)
