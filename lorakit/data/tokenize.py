"""Tokenization into ragged arrays: flat int32 ids plus int64 offsets, so that the trainer pads each batch
to its own longest row instead of every row to ``max_len``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import numpy as np

# Texts per tokenizer call: large enough for the fast tokenizer's Rust threads to pay off, small enough
# that the Python lists of ids it returns stay a few hundred MB at most.
CHUNK = 20_000


@attrs.define(kw_only=True, frozen=True)
class TokenizedSplit:
    """One split: row ``i`` is ``ids[offsets[i]:offsets[i + 1]]`` with labels ``labels[i]`` (one per task)."""

    ids: np.ndarray  # int32, every row's token ids concatenated (special tokens included, not padded)
    offsets: np.ndarray  # int64, n + 1 entries
    labels: np.ndarray  # int64, [n, n_tasks], contiguous per-task ids
    rows: np.ndarray  # int64, 1-based data row of the source file

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        """Tokens per row (int64)."""
        import numpy as np

        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        """Token ids of row ``i``."""
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


def tokenize_texts(texts: Sequence[str], tokenizer: Any, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int32, offsets int64)`` of ``texts``: special tokens in, truncated at ``max_len``, unpadded."""
    import itertools

    import numpy as np

    lengths = np.zeros(len(texts), dtype=np.int64)
    pieces: list[np.ndarray] = []
    for start in range(0, len(texts), CHUNK):
        chunk = list(texts[start : start + CHUNK])
        encoded = tokenizer(
            chunk,
            truncation=True,
            max_length=max_len,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        chunk_lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        lengths[start : start + len(encoded)] = chunk_lengths
        flat = itertools.chain.from_iterable(encoded)
        pieces.append(np.fromiter(flat, dtype=np.int32, count=int(chunk_lengths.sum())))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    return ids, offsets


def check_max_len(tokenizer: Any, max_len: int) -> None:
    """``data.max_len`` must leave room for text after the special tokens the tokenizer adds to each one
    (``[CLS]`` and ``[SEP]`` for BERT); at or below them a fast tokenizer keeps whole texts, untruncated."""
    from ..errors import ConfigError

    try:
        special = int(tokenizer.num_special_tokens_to_add(pair=False))
    except (AttributeError, TypeError, ValueError):  # not a transformers tokenizer: nothing to check against
        return
    if max_len <= special:
        raise ConfigError(
            [
                f"data.max_len: {max_len} leaves no room for text: the tokenizer adds {special} special "
                f"token(s) to every text; use at least {special + 1}"
            ]
        )
