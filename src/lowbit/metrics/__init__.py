"""Metrics by stable name (used by `--metric` and in JSON): fidelity to FP32 and task metrics."""

from lowbit.metrics.base import METRICS, Metric, register_metric
from lowbit.metrics.face import FaceVerification, verification_stats
from lowbit.metrics.fidelity import Cosine, Sqnr, Top1Agreement
from lowbit.metrics import classification, ctc, decisions, dense, detection, detection_ssd, embedding  # noqa: F401,E402 task metrics register on import
from lowbit.metrics.spec import MetricChoice, parse_metric  # noqa: E402

__all__ = ["METRICS", "Metric", "register_metric", "FaceVerification", "verification_stats", "Cosine", "Sqnr",
           "Top1Agreement", "MetricChoice", "parse_metric"]
