"""From a config to tokenized, labelled, split arrays: served from the fingerprint cache when it can be,
built (read → derive → validate → sample → split → tokenize) and stored when it cannot."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import ConfigError, DataError
from .cache import CacheWarning, CorruptEntry, LoadedEntry, discard, entry_path, read_entry, write_entry
from .cache import cache_root as default_cache_root
from .fingerprint import file_inputs, fingerprint_inputs, fingerprint_key, source_paths
from .labels import (
    MASKED,
    LabelMap,
    LabelWarning,
    build_label_map,
    configured_labels,
    encode_labels,
    unseen_labels,
)
from .reading import ROW, Table, empty_text_mask, read_table
from .splits import sample_indices, stratified_split
from .tokenize import TokenizedSplit, check_max_len, tokenize_texts

if TYPE_CHECKING:
    import numpy as np

    from ..config.schema import ExperimentConfig
    from ..plugins import Plugins


@attrs.define(kw_only=True, frozen=True)
class PreparedData:
    """What the trainer consumes: the label map, the tokenized splits, and where they came from.

    On a hit the split arrays are read-only memory maps of the cache files; copy before writing to them.
    """

    label_map: LabelMap
    splits: dict[str, TokenizedSplit]  # "train", "val", and "test" when configured
    fingerprint: str  # the cache key (sha256 hex)
    cache_path: Path
    hit: bool
    stats: dict[str, Any]  # rows read, dropped, sampled, split sizes, truncated rows
    #: each input file by role: ``{"path", "sha256"}`` (hashed once, for the cache key)
    files: dict[str, Any] = attrs.field(factory=dict)


def prepare_data(
    cfg: ExperimentConfig,
    *,
    tokenizer_loader: Callable[[], Any],
    plugins: Plugins | None = None,
    cache_root: str | Path | None = None,
) -> PreparedData:
    """Tokenized splits for ``cfg``, from the cache on a hit (memory-mapped, no tokenizer needed) or built.

    ``tokenizer_loader`` is called only on a miss. ``cache_root`` defaults to :func:`lorakit.data.cache_root`.
    A cache entry that fails its checks is rebuilt with a :class:`CacheWarning`. Bad data raises a one-line
    :class:`~lorakit.errors.DataError`.
    """
    from .. import __version__
    from ..plugins import get_plugins

    plugins = plugins or get_plugins()
    root = Path(cache_root) if cache_root is not None else default_cache_root(cfg)
    inputs = fingerprint_inputs(cfg, plugins)
    key = fingerprint_key(inputs)
    path = entry_path(root, key)
    loaded = load_verified(path, key)
    sources = source_paths(cfg)
    files = {
        role: {"path": path, "sha256": (inputs["files"][role] or {}).get("sha256")}
        for role, path in sources.items()
        if path
    }
    if loaded is not None:
        prepared = attrs.evolve(from_entry(loaded, hit=True), files=files)
        warn_about_labels(prepared, cfg)
        return prepared
    label_map, splits, stats = build_splits(cfg, plugins, tokenizer_loader)
    now = file_inputs(cfg, plugins)
    changed = [sources[role] for role in now if now[role] != inputs["files"][role]]
    if changed:
        # Storing now would file data read from the new bytes under the old bytes' key.
        raise DataError(f"{changed[0]}: the file changed while it was being read; run again")
    meta = {
        "lorakit_version": __version__,
        "inputs": inputs,
        "sources": sources,
        "tokenizer_source": cfg.model.arch,
        "label_map": label_map.to_json(),
        "stats": stats,
        "splits": {name: {"rows": len(s), "tokens": int(s.offsets[-1])} for name, s in splits.items()},
    }
    final = write_entry(root, key, meta, splits)
    prepared = PreparedData(
        label_map=label_map,
        splits=splits,
        fingerprint=key,
        cache_path=final,
        hit=False,
        stats=stats,
        files=files,
    )
    warn_about_labels(prepared, cfg)
    return prepared


def warn_about_labels(data: PreparedData, cfg: ExperimentConfig) -> None:
    """A warning per task with a label no training row carries (its head never learns it), and per task
    with no labelled validation row (its metrics are left out); on hits too, since both stay true."""
    import numpy as np

    for name, labels in unseen_labels(data.label_map, data.splits["train"].labels).items():
        warnings.warn(
            f"task {name!r}: label(s) {labels} have no rows in the training split (from "
            f"{cfg.data.raw_data_path}); the model never learns them",
            LabelWarning,
            stacklevel=3,
        )
    val = np.asarray(data.splits["val"].labels) if "val" in data.splits else None
    if val is None or not len(val):
        return
    for j, task in enumerate(data.label_map.tasks):
        if not (val[:, j] != MASKED).any():
            _check_headline(cfg, task.name)
            warnings.warn(
                f"task {task.name!r}: no validation row has a label (data.missing_labels = "
                f'"mask"); its metrics are left out',
                LabelWarning,
                stacklevel=3,
            )


def _check_headline(cfg: ExperimentConfig, task: str) -> None:
    """A task without labelled validation rows has no metrics: the epoch to keep cannot be chosen by one."""
    metric = cfg.train.save_strategy.removeprefix("best_")
    if metric in {f"{task}_{name}" for name in ("accuracy", "f1", *cfg.train.metrics)}:
        raise ConfigError(
            [
                f"train.save_strategy: {cfg.train.save_strategy!r} needs {metric!r}, but no validation row "
                f"has a label for task {task!r}"
            ]
        )


def load_verified(path: Path, key: str) -> LoadedEntry | None:
    """The entry at ``path`` if it passes its checks; a failing one is discarded with a warning."""
    try:
        return read_entry(path, key)
    except CorruptEntry as exc:
        warnings.warn(f"cache entry {path} is damaged ({exc}); rebuilding it", CacheWarning, stacklevel=3)
        discard(path)
        return None


def from_entry(entry: LoadedEntry, *, hit: bool) -> PreparedData:
    """A verified cache entry as :class:`PreparedData` (splits in train, val, test order)."""
    splits = {
        name: TokenizedSplit(**{a: arrays[a] for a in ("ids", "offsets", "labels", "rows")})
        for name, arrays in sorted(entry.splits.items(), key=lambda kv: ("train", "val", "test").index(kv[0]))
    }
    return PreparedData(
        label_map=LabelMap.from_json(entry.meta["label_map"]),
        splits=splits,
        fingerprint=entry.meta["key"],
        cache_path=entry.path,
        hit=hit,
        stats=entry.meta.get("stats", {}),
    )


# ---- building ----------------------------------------------------------------------------------


def _read_all(cfg: ExperimentConfig, plugins: Plugins) -> dict[str, Table]:
    paths = source_paths(cfg)
    return {role: read_table(p, cfg, plugins) for role, p in paths.items() if p is not None}


def _data_labels(cfg: ExperimentConfig, train: Table) -> dict[str, list[str]]:
    """Labels of tasks the config leaves open: a derive rule's labels in rule order, else the sorted
    distinct labels of the training file."""
    result = {}
    for task, labels in configured_labels(cfg).items():
        if labels is None:
            rule = cfg.data.derive.get(task)
            result[task] = list(rule.labels) if rule else sorted(train.frame[task].dropna().unique())
    return result


def _fixes(cfg: ExperimentConfig) -> dict[str, str]:
    """The fix an unknown-label error suggests, per task."""
    fixes = {}
    for task, labels in configured_labels(cfg).items():
        if task in cfg.data.derive:
            fixes[task] = f"widen data.derive.{task}.bins or fill the empty cells"
        elif cfg.task_labels(task) is not None:
            fixes[task] = "fix the cells or add the label to data.label_subset (and the global label map)"
        elif labels is not None:
            fixes[task] = f"fix the cells or add the label to {cfg.data.global_label_map}"
        else:
            fixes[task] = "fix the cells (the labels are those of the training file)"
    return fixes


def _encode(
    cfg: ExperimentConfig, table: Table, label_map: LabelMap, stats: dict[str, Any], role: str
) -> tuple[Table, np.ndarray]:
    """Label ids of a table's rows; rows without a usable label dropped (and counted) or refused."""
    d = cfg.data
    result = encode_labels(
        table.frame,
        label_map,
        path=table.path,
        drop_unknown=d.drop_unknown_labels,
        missing=d.missing_labels,
        fixes=_fixes(cfg),
        context=table.hints,
    )
    table.frame = table.frame[result.keep]
    stats["dropped_unknown_label"][role] = result.dropped_unknown
    stats["dropped_missing_label"][role] = result.dropped_missing
    stats["masked_label"][role] = result.masked
    if len(table.frame) == 0:
        raise DataError(f"{table.path}: no rows left after dropping empty texts and unusable labels")
    return table, result.ids[result.keep]


def build_splits(
    cfg: ExperimentConfig, plugins: Plugins, tokenizer_loader: Callable[[], Any]
) -> tuple[LabelMap, dict[str, TokenizedSplit], dict[str, Any]]:
    """Read, validate, sample, split and tokenize; the cache-free core of :func:`prepare_data`."""
    import numpy as np

    d = cfg.data
    tables = _read_all(cfg, plugins)
    stats: dict[str, Any] = {
        "rows_read": {role: len(t.frame) for role, t in tables.items()},
        "dropped_empty_text": {},
        "dropped_unknown_label": {},
        "dropped_missing_label": {},
        "masked_label": {},
    }
    # Empty texts first: a blank row usually lacks its label too, and "empty text" is the better message.
    for role, table in tables.items():
        empty = empty_text_mask(table, d.text_column, drop=d.drop_empty_text)
        table.frame = table.frame[~empty]
        stats["dropped_empty_text"][role] = int(empty.sum())
    label_map = build_label_map(cfg, data_labels=_data_labels(cfg, tables["raw"]))
    encoded = {role: _encode(cfg, table, label_map, stats, role) for role, table in tables.items()}

    chosen = _choose_rows(cfg, label_map, encoded, stats)

    tokenizer = tokenizer_loader()
    check_max_len(tokenizer, d.max_len)
    splits: dict[str, TokenizedSplit] = {}
    for name in ("train", "val", "test"):
        if name not in chosen:
            continue
        table, idx, ids = chosen[name]
        texts = table.frame[d.text_column].to_numpy()[idx].tolist()
        flat, offsets = tokenize_texts(texts, tokenizer, d.max_len)
        rows = table.frame[ROW].to_numpy()[idx].astype(np.int64)
        splits[name] = TokenizedSplit(ids=flat, offsets=offsets, labels=np.ascontiguousarray(ids), rows=rows)
    stats["split_sizes"] = {name: len(s) for name, s in splits.items()}
    stats["truncated_rows"] = {name: int((s.lengths() >= d.max_len).sum()) for name, s in splits.items()}
    return label_map, splits, stats


def _choose_rows(
    cfg: ExperimentConfig, label_map: LabelMap, encoded: dict[str, Any], stats: dict[str, Any]
) -> dict[str, tuple[Table, Any, Any]]:
    """Sample the raw rows, split them (stratified), and take the val/test files as given: each split's
    table, row indices and label ids."""
    import numpy as np

    d = cfg.data
    raw, raw_ids = encoded["raw"]
    picked = sample_indices(len(raw.frame), d.max_rows, d.sample_seed)
    stats["sampled"] = (
        {"from": len(raw.frame), "rows": len(picked), "seed": d.sample_seed}
        if len(picked) < len(raw.frame)
        else None
    )
    # Stratify on the label strings, not the ids, so that reordering label_subset keeps the same split.
    first_labels = np.asarray(label_map.tasks[0].labels, dtype=object)
    first = raw_ids[picked, 0]
    strata = np.where(first == MASKED, "", first_labels[np.maximum(first, 0)])  # masked: a stratum of its own
    parts = stratified_split(
        strata.astype(str),
        val_ratio=d.val_ratio if "val" not in encoded else 0.0,
        test_ratio=d.test_ratio if "test" not in encoded else 0.0,
        seed=cfg.seed,
    )
    chosen: dict[str, tuple[Table, np.ndarray, np.ndarray]] = {
        name: (raw, picked[idx], raw_ids[picked[idx]]) for name, idx in parts.items()
    }
    for role in ("val", "test"):
        if role in encoded:
            table, ids = encoded[role]
            chosen[role] = (table, np.arange(len(table.frame)), ids)
    for name in ("train", "val"):
        if name in chosen and len(chosen[name][1]) == 0:
            raise DataError(f"{d.raw_data_path}: too few rows ({len(picked)}) for a {name} split; add rows")
    return chosen
