"""Export a Hugging Face / PyTorch transformer encoder to ONNX for lowbit.

The TorchScript exporter (``dynamo=False``, opset 17) is used: it needs no onnxscript and writes
plain MatMul / Add / Softmax / LayerNormalization nodes whose patterns lowbit recognises. Batch
and sequence axes are dynamic, so one file serves every batch size and sentence length.
Inputs: ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, shape (batch, sequence));
output: ``last_hidden_state`` (batch, sequence, hidden). Pooling is done outside the graph
(``lowbit.transformers.text.mean_pool``) so the quantized graph stays the encoder only.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:  # torch is imported where it is used: `import lowbit` stays light
    import torch

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
OPSET = 17


def _encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face encoder with positional int64 inputs and one output tensor."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state

    return Encoder()


def export_encoder(model: torch.nn.Module, path: str | Path | None = None, seq_len: int = 16,
                   vocab_size: int = 100, opset: int = OPSET) -> onnx.ModelProto:
    """ONNX export of a Hugging Face encoder (BertModel-like) with dynamic batch and sequence axes.

    >>> proto = export_encoder(AutoModel.from_pretrained(path), "minilm.onnx")  # doctest: +SKIP
    """
    import torch

    wrapped = _encoder(model).eval()
    ids = torch.randint(1, vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(0))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    axes = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch", 1: "sequence"}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(wrapped, args, buf, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    if path is not None:
        onnx.save(proto, str(path))
    return proto
