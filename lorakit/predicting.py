"""Predicting over a file: the same rows back, with one label and one probability column per task."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import DataError
from .plugins import get_plugins
from .specs import ReadOptions


def predict_file(predictor: Any, input_path: str, output_path: str | None, *, batch_size: int = 64) -> int:
    """Read ``input_path`` with the data-source plugins, add ``<task>_pred`` and ``<task>_prob``, write it."""
    frame = get_plugins().data_source_for(input_path).read(Path(input_path), ReadOptions())
    column = predictor.text_column
    if column not in frame.columns:
        raise DataError(
            f"{input_path}: no text column {column!r}; columns: {', '.join(map(str, frame.columns))}"
        )
    results = predictor.predict(frame[column].fillna("").astype(str).tolist(), batch_size=batch_size)
    for task in predictor.tasks:
        frame[f"{task}_pred"] = [r[task]["label"] for r in results]
        frame[f"{task}_prob"] = [max(r[task]["probabilities"].values()) for r in results]
    target = output_path or sys.stdout
    suffix = Path(output_path or input_path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        text = frame.to_json(orient="records", lines=True, force_ascii=False)
    elif suffix in (".tsv", ".tab"):
        text = frame.to_csv(sep="\t", index=False)
    else:
        text = frame.to_csv(index=False)
    if isinstance(target, str):
        Path(target).write_text(text, encoding="utf-8")
    else:
        target.write(text)
    return len(frame)
