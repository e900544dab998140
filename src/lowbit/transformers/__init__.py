"""Transformer support: pattern finding and INT8 placement for exported encoders, text data
(the model's own tokenizer, real sentences, mean pooling), block-wise INT4 plans, and the
sentence-embedding metrics (`nn-preserved`, `worst-cosine`, registered on import).

>>> from lowbit.transformers import plan_int8, text_feeds, real_sentences  # doctest: +SKIP
"""

from lowbit.transformers import metrics as _metrics  # noqa: F401  (registers the metrics)
from lowbit.transformers.export import export_encoder
from lowbit.transformers.outliers import OutlierSplit
from lowbit.transformers.patterns import TransformerPatterns, find_patterns, transformer_selection
from lowbit.transformers.pipeline import int8_config, layer_sensitivity, plan_int4, plan_int8
from lowbit.transformers.text import (embed, encode, load_tokenizer, mean_pool, packed_feeds, real_sentences,
                                      text_feeds)

__all__ = ["OutlierSplit", "TransformerPatterns", "embed", "encode", "export_encoder", "find_patterns", "int8_config",
           "layer_sensitivity", "load_tokenizer", "mean_pool", "packed_feeds", "plan_int4", "plan_int8",
           "real_sentences", "text_feeds", "transformer_selection"]
