"""Data: sources → DataFrame, label maps + validation, tokenization, fingerprinted cache.

Importing this package is cheap; numpy, pandas and transformers load inside the functions that use them.
"""

from .cache import CacheWarning, cache_root
from .fingerprint import CACHE_FORMAT_VERSION, fingerprint_inputs, fingerprint_key, tokenizer_identity
from .labels import LabelMap, TaskLabels, build_label_map, read_global_label_map
from .prepare import PreparedData, prepare_data
from .tokenize import TokenizedSplit

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheWarning",
    "LabelMap",
    "PreparedData",
    "TaskLabels",
    "TokenizedSplit",
    "build_label_map",
    "cache_root",
    "fingerprint_inputs",
    "fingerprint_key",
    "prepare_data",
    "read_global_label_map",
    "tokenizer_identity",
]
