"""Facts several parts of lorakit share, in one torch-free home: task types, exit codes, the headline metric.

Anything may import this module (the scheduler, ``lorakit ls``, the trainer): it imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

# ---- task types: a count of label columns, not a branch -----------------------------------------------

#: 1 label column, 2, 3 or more. ``multi_cls`` is also accepted for 2 (the seed uses it for double label).
TASK_TYPES = ("single_cls", "double_cls", "multi_cls")


def task_type_for(n_tasks: int) -> str:
    """The task type of an experiment with ``n_tasks`` label columns (at least one)."""
    return TASK_TYPES[min(max(n_tasks, 1), 3) - 1]


# ---- exit codes of ``lorakit train`` -------------------------------------------------------------------

#: a run stopped by SIGUSR1/SIGTERM after writing its checkpoint (EX_TEMPFAIL: try again)
PREEMPTED_EXIT = 75
#: a run stopped by SIGINT (Ctrl-C) after writing its checkpoint, as a shell reports 128 + SIGINT
INTERRUPTED_EXIT = 130


def stop_exit_code(signal_name: str) -> int:
    """The exit code of a run stopped by ``signal_name`` after checkpointing."""
    return INTERRUPTED_EXIT if signal_name == "SIGINT" else PREEMPTED_EXIT


# ---- the headline metric: what "best" means for a run ---------------------------------------------------

DEFAULT_HEADLINE = "avg_f1"


def headline_metric(save_strategy: str | None) -> str:
    """The metric a run is judged by: ``best_<metric>``'s metric, else the default (``last`` judges none)."""
    if save_strategy and save_strategy.startswith("best_"):
        return save_strategy.removeprefix("best_")
    return DEFAULT_HEADLINE


def headline_or_default(recorded: object) -> str:
    """The headline a run recorded, or the default for runs that recorded none."""
    return recorded if isinstance(recorded, str) and recorded else DEFAULT_HEADLINE


class _MetricSpec(Protocol):
    @property
    def greater_is_better(self) -> bool: ...  # pragma: no cover - a protocol


class _Metrics(Protocol):
    def __iter__(self) -> Iterator[str]: ...  # pragma: no cover - a protocol

    def get(self, name: str) -> _MetricSpec: ...  # pragma: no cover - a protocol


def greater_is_better(metric: str, metrics: _Metrics | None) -> bool:
    """Whether a metrics.json key improves upwards. The metric plugin says so (``<task>_<metric>`` keys
    included, ``avg_<metric>`` too); a key no plugin names improves upwards unless it is a loss.
    ``metrics`` is the metric registry (:meth:`lorakit.plugins.Plugins.metrics`); None asks the process's
    plugins, loaded on first use."""
    if metrics is None:
        metrics = _loaded_metrics()
    if metrics is not None:
        for name in metrics:
            if metric == name or metric.endswith(f"_{name}"):
                return metrics.get(name).greater_is_better
    return not metric.endswith("loss")


def _loaded_metrics() -> _Metrics | None:
    from .plugins import get_plugins

    try:
        return get_plugins().metrics()
    except Exception:  # a plugin set that cannot load still lets the index pick a best epoch by name
        return None


def is_better(value: float, best: float | None, greater: bool) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet) in the metric's direction."""
    if best is None:
        return True
    return value > best if greater else value < best
