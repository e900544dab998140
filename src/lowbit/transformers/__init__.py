"""Transformer support: pattern finding and INT8 placement for exported encoders
(`patterns`, `outliers`), text data (the model's own tokenizer, real sentences, mean pooling:
`text`), block-wise INT4 plans and the transformer recipe's steps (`pipeline`), export (`export`),
and the sentence-embedding metrics (`metrics`: `nn-preserved`, `worst-cosine`).

The package itself imports only the pattern finder and the text helpers, so that the algorithms
(SmoothQuant reads the patterns) can use them without importing the recipe built from them.

>>> from lowbit.transformers.pipeline import plan_int8  # doctest: +SKIP
"""

from lowbit.transformers import metrics as _metrics  # noqa: F401  (registers the metrics)
from lowbit.transformers.patterns import TransformerPatterns, find_patterns, transformer_selection
from lowbit.transformers.text import (embed, encode, load_tokenizer, mean_pool, packed_feeds, real_sentences,
                                      text_feeds)

__all__ = ["TransformerPatterns", "embed", "encode", "find_patterns", "load_tokenizer", "mean_pool", "packed_feeds",
           "real_sentences", "text_feeds", "transformer_selection"]
