"""The lorakit plugin contract.

Every hook is prefixed ``lorakit_``. Registration hooks receive a ``register`` callable and call it once
per thing they provide; the registry rejects duplicate names, naming both distributions.
Selection hooks are *firstresult*: pluggy stops at the first implementation that returns non-None.
Hooks change only by gaining arguments (an implementation may accept fewer than the spec offers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .specs import (
        BackboneSpec,
        DataSourceSpec,
        Device,
        ExecutorSpec,
        LossSpec,
        LRSchedulerSpec,
        MetricSpec,
        TaskHeadSpec,
        TuningMethodSpec,
    )

hookspec = pluggy.HookspecMarker("lorakit")
hookimpl = pluggy.HookimplMarker("lorakit")


@hookspec
def lorakit_register_backbones(register: Callable[[BackboneSpec], None]) -> None:
    """Register encoder families.

    :param register: call once per :class:`lorakit.specs.BackboneSpec`.
    :return: nothing; not firstresult, every implementation is called.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def lorakit_resolve_backbone(model_config: Any) -> str | None:
    """Pick the backbone for a loaded Hugging Face config (``transformers.PretrainedConfig``).

    Called only when ``model.backbone`` is not set. Look at ``model_config.model_type``.

    :param model_config: the model's HF config.
    :return: a registered backbone name, or None to let other plugins decide.
        firstresult: stops at the first non-None result; the built-in ``auto`` answers last.

    .. versionadded:: 0.1
    """


@hookspec
def lorakit_register_tuning_methods(register: Callable[[TuningMethodSpec], None]) -> None:
    """Register ways to adapt the encoder (``model.method``): lora, dora, ia3, ...

    :param register: call once per :class:`lorakit.specs.TuningMethodSpec`.
    :return: nothing; not firstresult.

    .. versionadded:: 0.1
    """


@hookspec
def lorakit_register_task_heads(register: Callable[[TaskHeadSpec], None]) -> None:
    """Register task head modules (``model.head`` or ``[model.heads.<task>]``).

    :param register: call once per :class:`lorakit.specs.TaskHeadSpec`.
    :return: nothing; not firstresult.

    .. versionadded:: 0.1
    """


@hookspec
def lorakit_register_losses(register: Callable[[LossSpec], None]) -> None:
    """Register per-task losses (``train.loss``).

    :param register: call once per :class:`lorakit.specs.LossSpec`.
    :return: nothing; not firstresult.

    .. versionadded:: 0.1
    """


@hookspec
def lorakit_register_metrics(register: Callable[[MetricSpec], None]) -> None:
    """Register evaluation metrics (``train.metrics``).

    :param register: call once per :class:`lorakit.specs.MetricSpec`.
    :return: nothing; not firstresult.

    .. versionadded:: 0.1
    """


@hookspec
def lorakit_register_lr_schedulers(register: Callable[[LRSchedulerSpec], None]) -> None:
    """Register learning-rate schedules (``train.lr_scheduler``), each with warmup.

    :param register: call once per :class:`lorakit.specs.LRSchedulerSpec`.
    :return: nothing; not firstresult.

    .. versionadded:: 0.1
    """


@hookspec
def lorakit_register_data_sources(register: Callable[[DataSourceSpec], None]) -> None:
    """Register file readers, chosen by file suffix.

    :param register: call once per :class:`lorakit.specs.DataSourceSpec`.
    :return: nothing; not firstresult.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def lorakit_detect_devices() -> list[Device] | None:
    """Report the device inventory.

    :return: a list of :class:`lorakit.specs.Device` (an empty list means CPU only), or None to
        let the next plugin answer. firstresult: stops at the first non-None result.

    .. versionadded:: 0.1
    """


@hookspec
def lorakit_register_executors(register: Callable[[ExecutorSpec], None]) -> None:
    """Register executors for ``run-parallel`` (local processes, Ray, ...).

    :param register: call once per :class:`lorakit.specs.ExecutorSpec`.
    :return: nothing; not firstresult.

    .. versionadded:: 0.1
    """


@hookspec
def lorakit_on_run_start(exp_id: str, config: Mapping[str, Any], output_dir: str) -> None:
    """Called once when a training run starts, after the output folder exists.

    :param exp_id: the experiment id.
    :param config: the merged config as a plain dict.
    :param output_dir: the experiment's output folder.
    :return: nothing; not firstresult.

    .. versionadded:: 0.1
    """


@hookspec
def lorakit_on_epoch_end(exp_id: str, epoch: int, metrics: Mapping[str, float]) -> None:
    """Called after each epoch's evaluation.

    :param exp_id: the experiment id.
    :param epoch: the epoch just finished, from 1.
    :param metrics: that epoch's metrics (``<task>_accuracy``, ``<task>_f1``, ``avg_f1``, ``train_loss``, ...).
    :return: nothing; not firstresult.

    .. versionadded:: 0.1
    """


@hookspec
def lorakit_on_run_end(exp_id: str, status: str, metrics: Mapping[str, Any], output_dir: str) -> None:
    """Called once when a run ends, whatever the outcome.

    :param exp_id: the experiment id.
    :param status: ``completed``, ``failed`` or ``preempted``.
    :param metrics: the content of metrics.json so far.
    :param output_dir: the experiment's output folder.
    :return: nothing; not firstresult.

    .. versionadded:: 0.1
    """
