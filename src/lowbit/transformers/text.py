"""Text in, model feeds and sentence embeddings out: a tokenizer-driven data loader for
transformer encoders, a fixed set of real English sentences that ships with Python, and the
pooling that turns token states into normalised sentence embeddings.

Real sentences: the prose of CPython's own documentation (`pydoc_data.topics`: the language
reference and library manual text bundled with every CPython, PSF licence), split into sentences,
filtered (6-40 words, mostly letters, no code), de-duplicated and ordered by a SHA-1 of the
sentence, so the selection is fixed for a given Python version and needs no network or dataset
hub. `split` gives disjoint sets: calibration sentences never appear in the evaluation set.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.errors import ConfigError, DataError

SPLITS = ("calibration", "evaluation")
_CODE = re.compile(r"[{}\[\]=<>|_*`\\#$@~^]|\.\.\.|::|\w\.\w|--|\(\)")


def _clean_sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text)
    out = []
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
        s = s.strip()
        words = s.split()
        if not 6 <= len(words) <= 40 or not s[0].isupper() or s[-1] not in ".!?":
            continue
        if _CODE.search(s) or sum(c.isalpha() or c == " " for c in s) < 0.88 * len(s):
            continue
        out.append(s)
    return out


def real_sentences(split: str = "evaluation", n: int = 300) -> list[str]:
    """`n` real English sentences from CPython's bundled documentation, disjoint between splits.

    >>> len(real_sentences("calibration", 64)), len(real_sentences("evaluation", 266))
    (64, 266)
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}; got '{split}'")
    from pydoc_data.topics import topics

    seen: dict[str, str] = {}
    for key in sorted(topics):
        for s in _clean_sentences(topics[key]):
            seen.setdefault(s.lower(), s)
    ranked = sorted(seen.values(), key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    # even hash order -> evaluation, odd -> calibration: disjoint, and each a fixed sample
    chosen = ranked[0::2] if split == "evaluation" else ranked[1::2]
    if n > len(chosen):
        raise DataError(f"only {len(chosen)} {split} sentences are available; asked for {n}")
    return chosen[:n]


def load_tokenizer(model_dir: str | Path, max_length: int = 256) -> Any:
    """The model's own fast tokenizer (`tokenizer.json`), truncating to `max_length` tokens."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{path}: no tokenizer.json in the model folder")
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length)
    tok.no_padding()
    return tok


def encode(tokenizer: Any, texts: Sequence[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
    """One batch of feeds (input_ids, attention_mask, token_type_ids; int64, (B, T)), padded to the
    longest text (or to `pad_to` tokens) with attention_mask 0 on the padding."""
    encs = tokenizer.encode_batch(list(texts))
    t = max(max(len(e.ids) for e in encs), pad_to or 0)
    ids = np.zeros((len(encs), t), np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for i, e in enumerate(encs):
        k = len(e.ids)
        ids[i, :k], mask[i, :k], types[i, :k] = e.ids, e.attention_mask, e.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def text_feeds(tokenizer: Any, texts: Iterable[str]) -> list[dict[str, np.ndarray]]:
    """One feed dict per text (batch 1, its own length: no padding), ready for `lowbit.data.as_feeds`.

    >>> calib = text_feeds(tok, real_sentences("calibration", 64))  # doctest: +SKIP
    >>> lowbit.quantize("minilm.onnx", "int8-transformer", calib)   # doctest: +SKIP
    """
    return [encode(tokenizer, [t]) for t in texts]


def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Sentence embeddings (B, H): token states (B, T, H) averaged over unmasked tokens, then
    L2-normalised (what sentence-transformers' all-MiniLM-L6-v2 does)."""
    m = mask.astype(np.float32)[..., None]
    emb = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.astype(np.float32)


def embed(session: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 1) -> np.ndarray:
    """Normalised sentence embeddings (N, H) of `texts` from an ONNX Runtime session of an encoder."""
    names = {i.name for i in session.get_inputs()}
    out = []
    for k in range(0, len(texts), batch_size):
        feeds = encode(tokenizer, texts[k:k + batch_size])
        hidden = session.run(None, {n: v for n, v in feeds.items() if n in names})[0]
        out.append(mean_pool(hidden, feeds["attention_mask"]))
    return np.concatenate(out)


def packed_feeds(tokenizer: Any, texts: Sequence[str], length: int = 128) -> list[dict[str, np.ndarray]]:
    """Feeds of exactly `length` tokens each, made by concatenating consecutive texts (each with its
    own [CLS] ... [SEP]) and cutting: equal shapes, no padding. For algorithms that stack
    calibration batches (GPTQ's Hessians), which cannot stack sentences of different lengths."""
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer.encode(t).ids)
    out = []
    for k in range(0, len(ids) - length + 1, length):
        chunk = np.asarray(ids[k:k + length], np.int64)[None]
        out.append({"input_ids": chunk, "attention_mask": np.ones_like(chunk), "token_type_ids": np.zeros_like(chunk)})
    return out
