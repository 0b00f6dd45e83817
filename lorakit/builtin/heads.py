"""Built-in task heads: ``linear`` and ``mlp``. Heads are never LoRA-wrapped; they always train."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..specs import TaskHeadSpec


def _linear(hidden_size: int, num_labels: int, options: dict[str, Any]) -> Any:
    from torch import nn

    return nn.Sequential(nn.Dropout(options.get("dropout", 0.1)), nn.Linear(hidden_size, num_labels))


def _mlp(hidden_size: int, num_labels: int, options: dict[str, Any]) -> Any:
    from torch import nn

    width = options.get("hidden_size") or hidden_size
    dropout = options.get("dropout", 0.1)
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(hidden_size, width),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(width, num_labels),
    )


def _linear_parameters(hidden_size: int, num_labels: int, options: dict[str, Any]) -> int:
    return hidden_size * num_labels + num_labels


def _mlp_parameters(hidden_size: int, num_labels: int, options: dict[str, Any]) -> int:
    width = options.get("hidden_size") or hidden_size
    return hidden_size * width + width + width * num_labels + num_labels


@hookimpl
def lorakit_register_task_heads(register):
    register(
        TaskHeadSpec(
            name="linear",
            build=_linear,
            trainable_parameters=_linear_parameters,
            description="dropout + linear layer",
        )
    )
    register(
        TaskHeadSpec(
            name="mlp",
            build=_mlp,
            trainable_parameters=_mlp_parameters,
            description="dropout + linear (model.head_hidden_size wide) + GELU + dropout + linear",
        )
    )
