"""Emit stage: a QuantPlan becomes a deployable ONNX model (QDQ INT8, FP16, dynamic INT8)."""

from lowbit.emit.qdq import emit_qdq, emit_simulation
from lowbit.emit.metadata import record_plan

__all__ = ["emit_qdq", "emit_simulation", "record_plan"]
