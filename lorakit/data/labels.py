"""Label maps: the global map (``{label: global id}``, the one truth for label names), per-task label
lists with contiguous ids, and the check that turns a frame's label strings into those ids.

No heavy imports at module level: the config schema imports this module to validate subsets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ..config.labelmap import read_global_label_map
from ..conventions import task_type_for
from ..errors import ConfigError, DataError, LorakitWarning

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ..config.schema import ExperimentConfig

# The id of a masked label cell (data.missing_labels = "mask"): torch's ignore_index, which the losses skip
# and the metrics leave out.
MASKED = -100
# Per task, whether a row's label cell is empty (read_table adds one such column per task).
EMPTY_PREFIX = "__empty__:"
# How many offending rows an error message quotes: enough to spot a pattern, short enough for one line.
QUOTED_ROWS = 5


class LabelWarning(LorakitWarning):
    """A label of a task has no training rows, or a task has no labelled validation rows."""


@attrs.define(kw_only=True, frozen=True)
class TaskLabels:
    """One task: its name (= its label column), labels in id order and their global ids."""

    name: str
    labels: list[str]
    global_ids: list[int | None]

    def id_of(self) -> dict[str, int]:
        """``{label: contiguous id}``."""
        return {label: i for i, label in enumerate(self.labels)}


@attrs.define(kw_only=True, frozen=True)
class LabelMap:
    """Every task of an experiment, in task order (what ``label_map.json`` records)."""

    tasks: list[TaskLabels]

    @property
    def task_type(self) -> str:
        return task_type_for(len(self.tasks))

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskLabels:
        """The task called ``name``; KeyError listing the tasks otherwise."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task {name!r}; tasks: {self.names}")

    def to_json(self) -> dict[str, Any]:
        """``{"task_type": ..., "tasks": {name: {"labels": [...], "global_ids": [...]}}}``, in task order."""
        return {
            "task_type": self.task_type,
            "tasks": {
                t.name: {"labels": list(t.labels), "global_ids": list(t.global_ids)} for t in self.tasks
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelMap:
        """Inverse of :meth:`to_json`."""
        return cls(
            tasks=[
                TaskLabels(name=name, labels=list(spec["labels"]), global_ids=list(spec["global_ids"]))
                for name, spec in data["tasks"].items()
            ]
        )


def _subset_key(cfg: ExperimentConfig, task: str) -> str:
    return f"data.label_subset.{task}" if isinstance(cfg.data.label_subset, dict) else "data.label_subset"


def configured_labels(cfg: ExperimentConfig) -> dict[str, list[str] | None]:
    """Each task's labels as far as config and global map decide them; None where only the data can tell.

    Single-label without ``label_subset`` takes every label of the global map in global-id order; with no
    global map either, the labels come from the data (``None`` here).
    """
    global_map = read_global_label_map(cfg.data.global_label_map) if cfg.data.global_label_map else None
    result: dict[str, list[str] | None] = {}
    for task in cfg.task_columns:
        labels = cfg.task_labels(task)
        if labels is None and global_map is not None:
            labels = sorted(global_map, key=global_map.__getitem__)
        result[task] = labels
    return result


def build_label_map(
    cfg: ExperimentConfig, *, data_labels: Mapping[str, Sequence[str]] | None = None
) -> LabelMap:
    """The experiment's label map from the config and the global map.

    ``data_labels`` supplies the labels of tasks the config leaves open (no ``label_subset`` and no global
    map); :func:`lorakit.data.prepare_data` passes the distinct labels it found. Without it such a config
    raises ConfigError. Every label must be in the global map when one is configured.
    """
    global_map = read_global_label_map(cfg.data.global_label_map) if cfg.data.global_label_map else None
    tasks: list[TaskLabels] = []
    for task, labels in configured_labels(cfg).items():
        if labels is None:
            if data_labels is None or task not in data_labels:
                raise ConfigError(
                    [
                        f"{_subset_key(cfg, task)}: the labels of {task!r} come from the data (no "
                        "label_subset and no data.global_label_map); call prepare_data, or set one of them"
                    ]
                )
            labels = list(data_labels[task])
        if len(labels) < 2:  # the config's own lists are checked when it loads: these came from the data
            key = _subset_key(cfg, task) if isinstance(cfg.data.label_subset, dict) else "data.label_column"
            raise ConfigError(
                [
                    f"{key}: task {task!r} has {len(labels)} label(s) {list(labels)}; a classifier needs at least 2"
                ]
            )
        if global_map is None:
            global_ids: list[int | None] = [None] * len(labels)
        else:
            missing = [label for label in labels if label not in global_map]
            if missing:
                raise ConfigError(
                    [f"{_subset_key(cfg, task)}: labels {missing} are not in {cfg.data.global_label_map}"]
                )
            global_ids = [global_map[label] for label in labels]
        tasks.append(TaskLabels(name=task, labels=list(labels), global_ids=global_ids))
    return LabelMap(tasks=tasks)


def _quote(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # NaN: an empty cell
        return "<empty>"
    return repr(value)


def empty_cells(series: pd.Series) -> np.ndarray:
    """Cells that hold no label: missing, or nothing but whitespace."""
    import numpy as np

    blank = np.fromiter((isinstance(v, str) and not v.strip() for v in series), dtype=bool, count=len(series))
    return series.isna().to_numpy(dtype=bool) | blank


def _empty_mask(frame: pd.DataFrame, task: str) -> np.ndarray:
    column = f"{EMPTY_PREFIX}{task}"
    if column in frame.columns:  # read_table knows better: a derived cell is empty when its source is
        return frame[column].to_numpy(dtype=bool)
    return empty_cells(frame[task])


@attrs.define(kw_only=True, frozen=True)
class EncodedLabels:
    """A frame's label ids and what became of the rows without a usable label."""

    ids: Any  # np.ndarray [n, tasks] int64; MASKED where a masked cell is empty
    keep: Any  # np.ndarray [n] bool: the rows that stay
    dropped_unknown: dict[str, int]  # per task: rows dropped for a label outside the task's labels
    dropped_missing: dict[str, int]  # per task: rows dropped that had an empty cell in this column
    masked: dict[str, int]  # per task: rows kept with this task's label masked


def encode_labels(
    frame: pd.DataFrame,
    label_map: LabelMap,
    *,
    path: str,
    drop_unknown: bool,
    missing: str = "error",
    fixes: Mapping[str, str] | None = None,
    context: Mapping[str, str] | None = None,
) -> EncodedLabels:
    """Map each task column of ``frame`` (label strings, NaN for none) to contiguous ids.

    A row whose label is outside the task's labels is an error naming the file, the column, how many rows,
    the first row numbers and values, and the fix, unless ``drop_unknown`` (then the row is dropped). An
    empty cell is such a label when ``missing`` is ``"error"``; with ``"drop"`` its row is dropped, with
    ``"mask"`` the cell gets id :data:`MASKED` and the row stays while some task still has a label.
    ``frame["__row__"]`` holds 1-based row numbers of the file; ``context`` adds per-task detail (e.g. a
    derive rule's source values) to the message.
    """
    import numpy as np

    n, tasks = len(frame), label_map.tasks
    ids = np.zeros((n, len(tasks)), dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    empty = np.zeros((n, len(tasks)), dtype=bool)
    dropped_unknown: dict[str, int] = {}
    for j, task in enumerate(tasks):
        codes = frame[task.name].map(task.id_of())  # unknown and NaN both become NaN
        bad = codes.isna().to_numpy()
        if missing != "error":
            empty[:, j] = bad & _empty_mask(frame, task.name)
        unknown = bad & ~empty[:, j]
        if unknown.any() and not drop_unknown:
            raise _unknown_labels(frame, task, unknown, path, (fixes or {}).get(task.name), context)
        dropped_unknown[task.name] = int(unknown.sum())
        keep &= ~unknown
        ids[~bad, j] = codes[~bad].to_numpy(dtype=np.int64)
        ids[empty[:, j], j] = MASKED
    # "drop": a row with any empty cell goes; "mask": only a row with no label left (it would train nothing)
    gone = keep & (empty.any(axis=1) if missing == "drop" else empty.all(axis=1))
    keep &= ~gone
    return EncodedLabels(
        ids=ids,
        keep=keep,
        dropped_unknown=dropped_unknown,
        dropped_missing={t.name: int((gone & empty[:, j]).sum()) for j, t in enumerate(tasks)},
        masked={t.name: int((keep & empty[:, j]).sum()) for j, t in enumerate(tasks)},
    )


def _unknown_labels(
    frame: pd.DataFrame,
    task: TaskLabels,
    unknown: np.ndarray,
    path: str,
    fix: str | None,
    context: Mapping[str, str] | None,
) -> DataError:
    count = int(unknown.sum())
    values = frame[task.name].to_numpy()[unknown]
    rows = frame["__row__"].to_numpy()[unknown][:QUOTED_ROWS]
    listed = ", ".join(f"row {r}: {_quote(v)}" for r, v in zip(rows, values[:QUOTED_ROWS], strict=True))
    more = ", ..." if count > QUOTED_ROWS else ""
    extra = (context or {}).get(task.name, "")
    fix = fix or "add the label to data.label_subset"
    empties = any(_quote(v) == "<empty>" for v in values)
    hole = '; for the empty cells, data.missing_labels = "drop" or "mask" also works' if empties else ""
    return DataError(
        f"{path}: column {task.name!r}: {count} row(s) have a label outside {task.labels} "
        f"({listed}{more}){extra}; {fix}, or set data.drop_unknown_labels = true to drop these rows{hole}"
    )


def unseen_labels(label_map: LabelMap, ids: np.ndarray) -> dict[str, list[str]]:
    """Per task, the labels no row of ``ids`` (``[n, tasks]``) carries; tasks that have them all left out."""
    import numpy as np

    result = {}
    for j, task in enumerate(label_map.tasks):
        seen = set(np.unique(np.asarray(ids)[:, j]).tolist()) if len(ids) else set()
        absent = [label for i, label in enumerate(task.labels) if i not in seen]
        if absent:
            result[task.name] = absent
    return result
