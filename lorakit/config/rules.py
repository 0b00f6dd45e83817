"""The range and semantic checks of a structured config: each returns ``[(dotted key, problem)]``.

The value checks (:func:`choice`, :func:`positive_ints`, :func:`fraction`, ...) are public: a plugin's
options class uses them in its ``problems(table)`` method, so its errors read like the core's.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..conventions import TASK_TYPES
from ..errors import ConfigError, did_you_mean
from ..runs.layout import exp_id_problem
from .converter import Problems, flatten, unstructure
from .labelmap import read_global_label_map
from .loader import file_kind_problem
from .options import plugin_option_problems, tuning_table_problems
from .schema import (
    DEVICES,
    ENCODING_ERRORS,
    MISSING_LABELS,
    MIXED_PRECISION,
    POOLINGS,
    PRIORITIES,
    ExperimentConfig,
)

if TYPE_CHECKING:
    from ..plugins import Plugins


def semantic_problems(cfg: ExperimentConfig, plugins: Plugins) -> Problems:
    """Every value checked against its range or choices, table by table; non-finite numbers anywhere."""
    problems: Problems = []
    for check in (
        _top_problems,
        _data_problems,
        _split_problems,
        _derive_problems,
        _label_subset_problems,
        _path_problems,
        _model_problems,
    ):
        problems.extend(check(cfg))
    problems += tuning_table_problems(cfg.model.tuning)
    problems += _head_problems(cfg)
    problems += plugin_option_problems(cfg, plugins)
    for check in (_train_problems, _loss_weight_problems, _resources_problems):
        problems.extend(check(cfg))
    reported = {key for key, _ in problems}
    problems.extend(p for p in _non_finite_problems(cfg) if p[0] not in reported)
    return problems


# ---- value checks: each returns [(key, problem)], empty when the value is fine (None: unset, fine) ----


def choice(key: str, value: str | None, allowed: Sequence[str]) -> Problems:
    if value is None or value in allowed:
        return []
    return [(key, f"{value!r} is not one of {', '.join(allowed)}{did_you_mean(value, allowed)}")]


def positive_ints(values: Mapping[str, int | None]) -> Problems:
    return [(key, f"must be positive, got {v}") for key, v in values.items() if v is not None and v <= 0]


def at_least_zero(values: Mapping[str, int | None]) -> Problems:
    return [(key, f"must be >= 0, got {v}") for key, v in values.items() if v is not None and v < 0]


def positive_number(key: str, value: float | None) -> Problems:
    if value is None or (math.isfinite(value) and value > 0):
        return []
    return [(key, f"must be a finite number > 0, got {value}")]


def non_negative(key: str, value: float | None, note: str = "") -> Problems:
    if value is None or (math.isfinite(value) and value >= 0):
        return []
    return [(key, f"must be a finite number >= 0{note}, got {value}")]


def fraction(key: str, value: float | None) -> Problems:
    """In [0, 1): a share of rows or steps, or a dropout probability (1 would drop everything)."""
    if value is None or 0 <= value < 1:  # NaN fails both comparisons
        return []
    return [(key, f"must be in [0, 1), got {value}")]


# ---- per table ------------------------------------------------------------------------------------


def _top_problems(cfg: ExperimentConfig) -> Problems:
    problems = choice("task_type", cfg.task_type, TASK_TYPES)
    exp_id_issue = exp_id_problem(cfg.exp_id)
    if exp_id_issue is not None:
        problems.append(("exp_id", exp_id_issue))
    # multi_cls is accepted for 2+ tasks: the seed uses it for the double-label experiment too.
    seed_multi = cfg.task_type == "multi_cls" and len(cfg.task_columns) >= 2
    if cfg.task_type in TASK_TYPES and cfg.task_type != cfg.derived_task_type and not seed_multi:
        problems.append(
            (
                "task_type",
                f"{cfg.task_type!r} disagrees with data.label_subset, which has "
                f"{len(cfg.task_columns)} label column(s) ({cfg.derived_task_type})",
            )
        )
    return problems + at_least_zero({"seed": cfg.seed})


def _data_problems(cfg: ExperimentConfig) -> Problems:
    d = cfg.data
    problems = [
        *choice("data.encoding_errors", d.encoding_errors, ENCODING_ERRORS),
        *choice("data.missing_labels", d.missing_labels, MISSING_LABELS),
        *positive_ints({"data.max_len": d.max_len, "data.max_rows": d.max_rows}),
        *at_least_zero({"data.sample_seed": d.sample_seed}),
    ]
    try:
        codecs.lookup(d.encoding)
    except LookupError:
        problems.append(("data.encoding", f"{d.encoding!r} is not a text encoding Python knows"))
    return problems


def _split_problems(cfg: ExperimentConfig) -> Problems:
    d = cfg.data
    problems = [*fraction("data.val_ratio", d.val_ratio), *fraction("data.test_ratio", d.test_ratio)]
    if d.val_data_path is None and d.val_ratio <= 0:
        problems.append(("data.val_ratio", "must be > 0 when data.val_data_path is not set"))
    # the shares taken from the training file must leave rows to train on
    val = d.val_ratio if d.val_data_path is None else 0.0
    test = d.test_ratio if d.test_data_path is None else 0.0
    if not problems and val + test >= 1:
        problems.append(("data.test_ratio", f"{test} + data.val_ratio {val} >= 1 leaves no rows to train on"))
    return problems


def _derive_problems(cfg: ExperimentConfig) -> Problems:
    problems: Problems = []
    for name, rule in cfg.data.derive.items():
        key = f"data.derive.{name}"
        if any(math.isnan(b) for b in rule.bins):
            problems.append((f"{key}.bins", f"edges must be numbers, got {rule.bins}"))
        elif len(rule.bins) != len(rule.labels) + 1:
            problems.append(
                (f"{key}.bins", f"{len(rule.bins)} edges for {len(rule.labels)} labels; need labels + 1")
            )
        elif any(b >= a for a, b in zip(rule.bins[1:], rule.bins, strict=False)):
            problems.append((f"{key}.bins", "edges must increase"))
        if len(rule.labels) < 2:
            problems.append((f"{key}.labels", f"needs at least 2 labels, got {rule.labels}"))
    return problems


def _label_subset_problems(cfg: ExperimentConfig) -> Problems:
    subset = cfg.data.label_subset
    if isinstance(subset, dict) and not subset:
        return [("data.label_subset", "is an empty table; give at least one column")]
    if subset is None:
        return []
    problems: Problems = []
    pairs = subset.items() if isinstance(subset, dict) else [("", subset)]
    for task, labels in pairs:
        key = f"data.label_subset.{task}" if task else "data.label_subset"
        if len(labels) < 2:
            problems.append((key, f"needs at least 2 labels, got {labels}"))
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            problems.append((key, f"repeats {dupes}"))
    return problems


def _path_problems(cfg: ExperimentConfig) -> Problems:
    """Input files that exist but are no files: a FIFO would block the first read for ever."""
    d = cfg.data
    paths = {"data.raw_data_path": d.raw_data_path, "data.val_data_path": d.val_data_path}
    paths["data.test_data_path"] = d.test_data_path  # the global map is checked where it is read
    problems = []
    for key, path in paths.items():
        problem = file_kind_problem(path) if path is not None else None
        if problem is not None:
            problems.append((key, f"{path}: {problem}"))
    if d.cache_dir is not None and Path(d.cache_dir).exists() and not Path(d.cache_dir).is_dir():
        problems.append(("data.cache_dir", f"{d.cache_dir}: not a directory"))
    return problems


def _model_problems(cfg: ExperimentConfig) -> Problems:
    return choice("model.pooling", cfg.model.pooling, POOLINGS)


def _head_problems(cfg: ExperimentConfig) -> Problems:
    m, tasks = cfg.model, cfg.task_columns
    problems = fraction("model.head_dropout", m.head_dropout)
    problems += positive_ints({"model.head_hidden_size": m.head_hidden_size})
    for task, head in m.heads.items():
        key = f"model.heads.{task}"
        if task not in tasks:
            problems.append((key, f"not a task{did_you_mean(task, tasks)}; tasks: {tasks}"))
        problems += fraction(f"{key}.dropout", head.dropout)
        problems += positive_ints({f"{key}.hidden_size": head.hidden_size})
    return problems


def _train_problems(cfg: ExperimentConfig) -> Problems:
    t = cfg.train
    problems = [
        *choice("train.mixed_precision", t.mixed_precision, MIXED_PRECISION),
        *choice("train.device", t.device, DEVICES),
        *positive_number("train.lr", t.lr),
        *fraction("train.warmup_ratio", t.warmup_ratio),
        *non_negative("train.weight_decay", t.weight_decay),
        *non_negative("train.max_grad_norm", t.max_grad_norm, " (0 or unset: no clipping)"),
    ]
    counts = {
        "train.batch_size": t.batch_size,
        "train.eval_batch_size": t.eval_batch_size,
        "train.epochs": t.epochs,
        "train.grad_accum": t.grad_accum,
        "train.early_stopping_patience": t.early_stopping_patience,
        "train.checkpoint_every_steps": t.checkpoint_every_steps,
    }
    problems += positive_ints(counts)
    if t.save_strategy != "last" and not t.save_strategy.startswith("best_"):
        problems.append(
            ("train.save_strategy", f'expected "last" or "best_<metric>", got {t.save_strategy!r}')
        )
    return problems


def _loss_weight_problems(cfg: ExperimentConfig) -> Problems:
    """A weight for every task (a task left out would silently train at weight 0), none negative."""
    key, tasks, weight = "train.loss_weight", cfg.task_columns, cfg.train.loss_weight
    if weight is None or weight == "uncertainty":
        return []
    if isinstance(weight, str):
        return [(key, f'expected a list, a table or "uncertainty", got {weight!r}')]
    if isinstance(weight, list):
        if len(weight) != len(tasks):
            return [(key, f"has {len(weight)} weights for {len(tasks)} task(s) {tasks}")]
        problems = [
            (key, f"the weight of {task!r} must be a finite number >= 0, got {w}")
            for task, w in zip(tasks, weight, strict=True)
            if not (math.isfinite(w) and w >= 0)
        ]
        return problems or _all_zero(key, weight)
    problems = [
        (f"{key}.{name}", f"not a task{did_you_mean(name, tasks)}; tasks: {tasks}")
        for name in weight
        if name not in tasks
    ]
    missing = [task for task in tasks if task not in weight]
    if missing:
        problems.append((key, f"no weight for task(s) {missing}; give every task a weight"))
    for name, w in weight.items():
        problems += non_negative(f"{key}.{name}", w)
    return problems or _all_zero(key, list(weight.values()))


def _all_zero(key: str, weights: Sequence[float]) -> Problems:
    return [(key, "every weight is 0: no task would be trained")] if not any(weights) else []


def _resources_problems(cfg: ExperimentConfig) -> Problems:
    r = cfg.resources
    return [
        *choice("resources.priority", r.priority, PRIORITIES),
        *positive_ints({"resources.gpus": r.gpus, "resources.memory_mb": r.memory_mb}),
    ]


def _non_finite_problems(cfg: ExperimentConfig) -> Problems:
    """NaN or infinity anywhere a number goes (loss options included); bin edges may be infinite."""
    problems: Problems = []
    for key, value in flatten(unstructure(cfg)).items():
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
        if key.startswith("data.derive.") and key.endswith(".bins"):
            bad = [v for v in bad if math.isnan(v)]
        if bad:
            problems.append((key, f"must be a finite number, got {bad[0]}"))
    return problems


def global_label_problems(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """Every subset label must be in the global label map (the one truth for label names)."""
    if cfg.data.global_label_map is None:
        return []
    try:
        global_map = read_global_label_map(cfg.data.global_label_map)
    except ConfigError as exc:
        return [("data.global_label_map", p) for p in exc.problems]
    problems = []
    if cfg.task_columns and cfg.task_labels(cfg.task_columns[0]) is None and len(global_map) < 2:
        # the single task takes every label of the map
        problems.append(("data.global_label_map", f"has {len(global_map)} label(s); a task needs at least 2"))
    for task in cfg.task_columns:
        labels = cfg.task_labels(task) or []
        missing = [label for label in labels if label not in global_map]
        if missing:
            key = (
                f"data.label_subset.{task}"
                if isinstance(cfg.data.label_subset, dict)
                else "data.label_subset"
            )
            problems.append((key, f"labels {missing} are not in {cfg.data.global_label_map}"))
    return problems
