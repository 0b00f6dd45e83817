"""Evaluation: per-task predictions and the metric plugins' figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..plugins import Plugins
from .batching import collate, eval_batches

# The metric behind "<task>_f1" (the seed's name for macro F1).
F1_METRIC = "macro_f1"


@np.errstate(all="ignore")
def predict_split(
    classifier: Any,
    split: Any,
    *,
    batch_size: int,
    pad_id: int,
    device: Any,
    probability_fns: Sequence[Any],
    rows: np.ndarray | None = None,
    autocast: Any = None,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Per-task probabilities of ``rows`` (default: every row), in the order of ``rows``.

    ``autocast`` is a context-manager factory (the run's mixed precision); the probabilities are fp32.
    """
    import contextlib

    import torch

    from ..modeling.artifacts import probabilities
    from .batching import to_device

    rows = np.arange(len(split.lengths())) if rows is None else np.asarray(rows)
    n_tasks = len(probability_fns)
    outputs: list[list[Any]] = [[] for _ in range(n_tasks)]
    order: list[np.ndarray] = []
    classifier.eval()
    with torch.no_grad():
        for positions in eval_batches(split.lengths()[rows], batch_size):
            batch = collate(split, rows[positions], pad_id)
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = classifier(
                    to_device(batch["input_ids"], device), to_device(batch["attention_mask"], device)
                )
            for t in range(n_tasks):
                outputs[t].append(probabilities(logits[t].float(), probability_fns[t]).cpu())
            order.append(positions)
    if not order:
        return [np.zeros((0, 0)) for _ in range(n_tasks)], None
    perm = np.concatenate(order)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    return [torch.cat(chunks).numpy()[inverse] for chunks in outputs], rows[perm]


def compute_metrics(
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    tasks: Sequence[str],
    num_labels: Sequence[int],
    metric_names: Sequence[str],
    plugins: Plugins,
) -> dict[str, float]:
    """``<task>_<metric>`` for each metric, ``<task>_accuracy``, ``<task>_f1`` (macro) and ``avg_f1``.
    A single task also gets the seed's plain ``accuracy`` and ``f1``.

    Each task counts only its labelled rows (a masked cell, -100, is no row of that task); a task with no
    labelled row has no figures, and ``avg_f1`` is the mean over the tasks that have them.
    """
    registry = plugins.metrics()
    names = list(dict.fromkeys(["accuracy", F1_METRIC, *metric_names]))
    result: dict[str, float] = {}
    f1s = []
    for t, task in enumerate(tasks):
        y_true = labels[:, t]
        keep = y_true >= 0
        if not keep.any():
            continue
        y_pred = probs[t].argmax(-1)
        for name in names:
            value = float(registry.get(name).compute(y_true[keep], y_pred[keep], num_labels[t]))
            key = "f1" if name == F1_METRIC else name
            result[f"{task}_{key}"] = value
        f1s.append(result[f"{task}_f1"])
    result["avg_f1"] = float(np.mean(f1s)) if f1s else 0.0
    if len(tasks) == 1 and f1s:
        result["accuracy"] = result[f"{tasks[0]}_accuracy"]
        result["f1"] = result[f"{tasks[0]}_f1"]
    return result


def class_reports(
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    tasks: Sequence[str],
    label_names: Sequence[Sequence[str]],
) -> dict[str, dict[str, Any]]:
    """Per task: its labels in id order, the confusion matrix (rows true, columns predicted; labelled rows
    only, so its counts add up to the task's labelled rows) and each label's precision, recall, F1 and
    support."""
    from ..builtin.metrics import confusion_matrix

    reports: dict[str, dict[str, Any]] = {}
    for t, task in enumerate(tasks):
        y_true = labels[:, t]
        keep = y_true >= 0
        names = [str(n) for n in label_names[t]]
        cm = confusion_matrix(y_true[keep], probs[t][keep].argmax(-1), len(names))
        tp = np.diag(cm).astype(np.float64)
        predicted, support = cm.sum(axis=0), cm.sum(axis=1)
        classes = {}
        for i, name in enumerate(names):
            precision = tp[i] / predicted[i] if predicted[i] else 0.0
            recall = tp[i] / support[i] if support[i] else 0.0
            f1 = 2 * tp[i] / (predicted[i] + support[i]) if predicted[i] + support[i] else 0.0
            classes[name] = {
                "precision": float(precision),
                "recall": float(recall),
                "f1": float(f1),
                "support": int(support[i]),
            }
        reports[task] = {"labels": names, "confusion": cm.tolist(), "classes": classes}
    return reports
