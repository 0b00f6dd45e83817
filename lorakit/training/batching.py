"""Length-grouped batches padded to their own longest row.

The batch order of an epoch is a pure function of (seed, epoch, rank): resuming at batch k of epoch e
replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Sort windows of this many batches by length: long enough to cut padding, short enough to stay random.
GROUP_WINDOW_BATCHES = 50


def epoch_batches(
    lengths: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    group_by_length: bool = True,
    num_replicas: int = 1,
    rank: int = 0,
) -> list[np.ndarray]:
    """Index batches for one epoch. With several replicas each rank gets every ``num_replicas``-th batch
    (the tail is dropped so that all ranks step the same number of times)."""
    n = len(lengths)
    if not shuffle:
        order = np.arange(n)
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    else:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
        if group_by_length:
            window = batch_size * GROUP_WINDOW_BATCHES
            chunks = []
            for start in range(0, n, window):
                chunk = order[start : start + window]
                # stable sort keeps the shuffled order among equal lengths
                chunks.append(chunk[np.argsort(-lengths[chunk], kind="stable")])
            order = np.concatenate(chunks) if chunks else order
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        if group_by_length:
            perm = rng.permutation(len(batches))
            batches = [batches[i] for i in perm]
    if num_replicas > 1:
        usable = len(batches) - len(batches) % num_replicas
        batches = batches[rank:usable:num_replicas]
    return batches


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Evaluation batches sorted by length (least padding); results are put back in row order."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(split: Any, index: np.ndarray, pad_id: int) -> dict[str, Any]:
    """Pad the rows ``index`` of a TokenizedSplit to their own longest row."""
    import torch

    starts = split.offsets[index]
    ends = split.offsets[index + 1]
    width = int((ends - starts).max())
    ids = np.full((len(index), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(index), width), dtype=np.int64)
    for row, (s, e) in enumerate(zip(starts, ends, strict=False)):
        ids[row, : e - s] = split.ids[s:e]
        mask[row, : e - s] = 1
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(np.asarray(split.labels[index], dtype=np.int64)),
    }


def to_device(tensor: Any, device: Any) -> Any:
    """Move a host batch tensor to ``device``: through pinned memory and without a sync on CUDA."""
    from .precision import device_type

    if device_type(device) != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
