"""Reproducible sampling and stratified train/val/test splits over row indices."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def sample_indices(n: int, max_rows: int | None, seed: int) -> np.ndarray:
    """At most ``max_rows`` of ``range(n)``, drawn with ``seed``, in file order (all of them if fewer)."""
    import numpy as np

    if max_rows is None or max_rows >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_rows, replace=False))


def _allocate(counts: np.ndarray, ratio: float, capacity: np.ndarray) -> np.ndarray:
    """Split ``round(ratio * total)`` rows over classes in proportion to ``counts`` (largest remainder),
    never more than ``capacity`` per class. Exact per-class rounding would drift from the requested total
    when there are many small classes."""
    import numpy as np

    total = round(float(ratio * counts.sum()))
    if ratio > 0 and counts.sum() >= 2:
        total = max(total, 1)  # a requested split is never empty when it can have a row
    total = min(total, int(capacity.sum()))
    exact = ratio * counts
    take = np.minimum(np.floor(exact).astype(np.int64), capacity)
    remainder = exact - np.floor(exact)
    while take.sum() < total:
        open_ = take < capacity
        # The class with the largest remainder that still has room; ties go to the bigger class.
        order = np.lexsort((-counts, -remainder))
        pick = next(int(i) for i in order if open_[i])
        take[pick] += 1
        remainder[pick] = -1.0
    return take


def stratified_split(
    strata: np.ndarray, *, val_ratio: float, test_ratio: float, seed: int
) -> dict[str, np.ndarray]:
    """Indices of ``train``, ``val`` (when ``val_ratio`` > 0) and ``test`` (when ``test_ratio`` > 0).

    Stratified on ``strata`` (the first task's labels; classes are visited in sorted order), seeded,
    deterministic. Every class with two or more rows keeps at least one row in train; a class with one row
    stays in train. Indices are sorted, so each split keeps file order.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = np.unique(strata)
    members = [rng.permutation(np.flatnonzero(strata == c)) for c in classes]
    counts = np.array([len(m) for m in members], dtype=np.int64)
    # At most n-1 rows of a class leave train (none of a singleton), shared by val and test.
    room = np.maximum(counts - 1, 0)
    test_take = _allocate(counts, test_ratio, room) if test_ratio > 0 else np.zeros_like(counts)
    val_take = _allocate(counts, val_ratio, room - test_take) if val_ratio > 0 else np.zeros_like(counts)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for m, nv, nt in zip(members, val_take, test_take, strict=True):
        parts["val"].append(m[:nv])
        parts["test"].append(m[nv : nv + nt])
        parts["train"].append(m[nv + nt :])
    result = {"train": np.sort(np.concatenate(parts["train"]))}
    if val_ratio > 0:
        result["val"] = np.sort(np.concatenate(parts["val"]))
    if test_ratio > 0:
        result["test"] = np.sort(np.concatenate(parts["test"]))
    return {k: v.astype(np.int64) for k, v in result.items()}
