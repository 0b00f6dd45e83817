"""Reading one input file: the data-source plugin for its suffix, derived label columns, column checks,
label cells as strings, and the empty-text filter. Every user-fixable problem is a one-line DataError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..config.loader import file_kind_problem
from ..errors import DataError
from ..specs import ReadOptions
from .labels import EMPTY_PREFIX, empty_cells

if TYPE_CHECKING:
    import pandas as pd

    from ..config.schema import DeriveRule, ExperimentConfig
    from ..plugins import Plugins

ROW = "__row__"  # 1-based data row of the source file, carried through to TokenizedSplit.rows
QUOTED_ROWS = 5


@attrs.define(kw_only=True)
class Table:
    """One file after reading: ``frame`` has ``__row__``, the text column and every task column (strings)."""

    path: str
    frame: Any  # pandas.DataFrame
    # Per derived task, the source column's values, so an unknown-label error can show the number that fell
    # outside the bins rather than a bare "<empty>".
    hints: dict[str, str] = attrs.field(factory=dict)


def as_strings(series: pd.Series) -> pd.Series:
    """Cells as strings, NaN kept: a CSV label column of digits (read as int, or float when a cell is
    empty) must still match the string labels ``"1"``, not ``"1.0"``."""

    def one(value: Any) -> str:
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    return series.map(one, na_action="ignore").astype(object)


def _columns_list(frame: pd.DataFrame) -> str:
    return ", ".join(repr(str(c)) for c in frame.columns if c != ROW)


def _require(frame: pd.DataFrame, column: str, path: str, setting: str) -> None:
    if column not in frame.columns:
        raise DataError(
            f"{path}: no column {column!r} ({setting}); the file has columns {_columns_list(frame)}"
        )


def _derive(frame: pd.DataFrame, name: str, rule: DeriveRule, path: str) -> tuple[pd.Series, str]:
    """``pandas.cut`` with ``include_lowest=True``; a value outside every bin becomes NaN (unknown label)."""
    import pandas as pd

    setting = f"data.derive.{name}.column"
    _require(frame, rule.column, path, setting)
    raw = frame[rule.column]
    values = pd.to_numeric(raw, errors="coerce")
    not_numeric = values.isna() & raw.notna()
    if not_numeric.any():
        rows = frame.loc[not_numeric, ROW].tolist()[:QUOTED_ROWS]
        cells = raw[not_numeric].tolist()[:QUOTED_ROWS]
        listed = ", ".join(f"row {r}: {c!r}" for r, c in zip(rows, cells, strict=True))
        raise DataError(
            f"{path}: column {rule.column!r} ({setting}) must be numeric to derive {name!r}; "
            f"{int(not_numeric.sum())} cell(s) are not ({listed}); fix those cells"
        )
    cut = pd.cut(values, bins=rule.bins, labels=rule.labels, right=rule.right, include_lowest=True)
    derived = cut.astype(object).where(cut.notna(), None)
    outside = derived.isna()
    hint = ""
    if outside.any():
        shown = ", ".join("<empty>" if pd.isna(v) else repr(v) for v in raw[outside].tolist()[:QUOTED_ROWS])
        hint = (
            f"; their {rule.column!r} values {shown} are empty or outside data.derive.{name}.bins {rule.bins}"
        )
    return derived, hint


def read_table(path: str, cfg: ExperimentConfig, plugins: Plugins) -> Table:
    """Read ``path`` with the data source for its suffix and check the columns the config names."""
    problem = file_kind_problem(path)
    if problem is not None:  # a FIFO would block the reader for ever
        raise DataError(f"{path}: {problem}")
    spec = plugins.data_source_for(path)
    frame = spec.read(path, ReadOptions(encoding=cfg.data.encoding, encoding_errors=cfg.data.encoding_errors))
    frame = frame.reset_index(drop=True)
    frame[ROW] = range(1, len(frame) + 1)
    hints: dict[str, str] = {}
    # Derived columns exist before the column checks, so a derived column can be a task.
    for name, rule in cfg.data.derive.items():
        frame[name], hint = _derive(frame, name, rule, path)
        if hint:
            hints[name] = hint
    _require(frame, cfg.data.text_column, path, "data.text_column")
    for task in cfg.task_columns:
        setting = "data.label_subset" if isinstance(cfg.data.label_subset, dict) else "data.label_column"
        _require(frame, task, path, setting)
    # whether each label cell is empty, before the cells become strings; a derived cell is empty when its
    # source cell is (a value outside the bins is an unknown label, not a missing one)
    empty = {
        EMPTY_PREFIX + task: empty_cells(frame[rule.column] if rule else frame[task])
        for task, rule in ((t, cfg.data.derive.get(t)) for t in cfg.task_columns)
    }
    columns = [ROW, cfg.data.text_column, *[t for t in cfg.task_columns if t != cfg.data.text_column]]
    frame = frame[columns].copy()
    for task in cfg.task_columns:
        frame[task] = as_strings(frame[task])
    for column, mask in empty.items():
        frame[column] = mask
    frame[cfg.data.text_column] = as_strings(frame[cfg.data.text_column])
    return Table(path=path, frame=frame, hints={k: v for k, v in hints.items() if k in cfg.task_columns})


def empty_text_mask(table: Table, text_column: str, *, drop: bool) -> Any:
    """Rows whose text is missing or blank: an error naming file, column and rows, unless ``drop``."""
    text = table.frame[text_column]
    empty = (text.isna() | (text.fillna("").str.strip() == "")).to_numpy()
    count = int(empty.sum())
    if count and not drop:
        rows = table.frame[ROW].to_numpy()[empty][:QUOTED_ROWS].tolist()
        more = ", ..." if count > QUOTED_ROWS else ""
        raise DataError(
            f"{table.path}: column {text_column!r}: {count} row(s) have empty text "
            f"(rows {', '.join(map(str, rows))}{more}); fill them, or set data.drop_empty_text = true "
            "to drop them"
        )
    return empty
