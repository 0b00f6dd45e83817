"""lorakit-ordinal: the ``ordinal`` task head and the ``coral`` loss, for ordered labels (低风险 < 中风险 < 高风险).

CORAL (Cao, Mirjalili & Raschka 2020, "Rank consistent ordinal regression for neural networks with
application to age estimation") turns K ordered classes into K-1 binary questions "is y > k?". One
weight vector w, shared by all of them, plus one bias per question gives the logits
``z_k = w·h + b_k`` (shape ``[batch, K-1]``). Because only the biases differ, P(y > k) = sigmoid(z_k)
falls with k whenever the biases do, and the paper shows the loss optimum has them ordered: the
answers are rank-consistent, unlike K-1 independent classifiers. A plain softmax head would treat
高风险 mistaken for 低风险 as no worse than mistaken for 中风险.

Class ids must follow the order of the labels (``data.label_subset.<task>`` lists them low to high).
Nothing heavy is imported at module import; torch loads when a head or loss is built.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from lorakit import hookimpl
from lorakit.errors import ConfigError
from lorakit.specs import LossSpec, TaskHeadSpec

if TYPE_CHECKING:
    import torch

# torch's default ignore index, which lorakit uses for rows without a label for a task.
IGNORE_INDEX = -100


@functools.cache
def _module_classes() -> dict[str, type]:
    """Define the torch modules once per process (here, because defining them needs torch)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class CoralHead(nn.Module):
        """Pooled vector → K-1 logits ``w·h + b_k`` with one shared ``w`` (optionally after a hidden layer)."""

        def __init__(self, hidden_size: int, num_labels: int, dropout: float, inner_size: int | None):
            super().__init__()
            layers: list[nn.Module] = [nn.Dropout(dropout)]
            if inner_size:
                layers += [nn.Linear(hidden_size, inner_size), nn.GELU(), nn.Dropout(dropout)]
                hidden_size = inner_size
            self.body = nn.Sequential(*layers)
            self.shared = nn.Linear(hidden_size, 1, bias=False)
            # Start ordered (b_0 > b_1 > ...), as the reference implementation does, so even the untrained
            # head's P(y > k) falls with k.
            self.thresholds = nn.Parameter(
                torch.arange(num_labels - 1, 0, -1, dtype=torch.float32) / (num_labels - 1)
            )

        def forward(self, pooled: torch.Tensor) -> torch.Tensor:
            return self.shared(self.body(pooled)) + self.thresholds

    class CoralLoss(nn.Module):
        """Mean over labelled rows of the summed binary cross-entropies of the K-1 "y > k" targets."""

        def __init__(self, num_labels: int):
            super().__init__()
            self.num_labels = num_labels

        def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            if logits.shape[-1] != self.num_labels - 1:
                raise ConfigError(
                    [
                        f"loss 'coral' needs K-1 = {self.num_labels - 1} logits per row (an ordinal head), "
                        f'got {logits.shape[-1]}; set [model.heads.<task>] type = "ordinal"'
                    ]
                )
            # Half-precision sigmoids saturate early; the loss is cheap in float32.
            work = logits.float()
            keep = labels != IGNORE_INDEX
            work, target = work[keep], labels[keep]
            if target.numel() == 0:
                # No labelled rows in this batch: contribute nothing (and keep the graph) instead of NaN.
                return logits.sum() * 0.0
            ks = torch.arange(self.num_labels - 1, device=work.device)
            levels = (target.unsqueeze(1) > ks).to(work.dtype)  # row i, column k: 1 if y_i > k
            return F.binary_cross_entropy_with_logits(work, levels, reduction="none").sum(1).mean()

        def extra_repr(self) -> str:
            return f"num_labels={self.num_labels}"

    classes: dict[str, type] = {"CoralHead": CoralHead, "CoralLoss": CoralLoss}
    for name, cls in classes.items():
        # A findable home, so pickle (spawned workers) can import them.
        cls.__module__ = __name__
        cls.__qualname__ = name
    return classes


def __getattr__(name: str) -> Any:
    """Expose the lazily defined ``CoralHead`` and ``CoralLoss`` classes as module attributes."""
    if name in ("CoralHead", "CoralLoss"):
        return _module_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_head(hidden_size: int, num_labels: int, options: Mapping[str, Any]) -> torch.nn.Module:
    """The CORAL head. Options (from ``[model.heads.<task>]``): ``dropout`` (0.1) and ``hidden_size``
    (when set, a linear + GELU layer of that width comes first, as in the ``mlp`` head)."""
    if num_labels < 2:
        raise ConfigError([f"head 'ordinal' needs at least 2 ordered labels, got {num_labels}"])
    dropout = options.get("dropout")
    return _module_classes()["CoralHead"](
        hidden_size, num_labels, 0.1 if dropout is None else float(dropout), options.get("hidden_size")
    )


def head_parameters(hidden_size: int, num_labels: int, options: Mapping[str, Any]) -> int:
    """What the head trains (for ``lorakit estimate``): the optional inner layer, the shared weight
    vector and the K-1 thresholds."""
    inner = options.get("hidden_size")
    first = hidden_size * inner + inner if inner else 0
    return first + (inner or hidden_size) + num_labels - 1


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``[B, K-1]`` CORAL logits → ``[B, K]`` class probabilities.

    P(y > k) = sigmoid(z_k); P(0) = 1 - P(y > 0), P(k) = P(y > k-1) - P(y > k), P(K-1) = P(y > K-2).
    Until training has ordered the thresholds a difference can dip below 0: clamp at 0 and renormalise.
    """
    import torch

    above = torch.sigmoid(logits.float())
    probs = torch.cat([1.0 - above[:, :1], above[:, :-1] - above[:, 1:], above[:, -1:]], dim=1).clamp(min=0.0)
    return probs / probs.sum(dim=1, keepdim=True).clamp(min=torch.finfo(probs.dtype).tiny)


def build_coral(num_labels: int, **options: Any) -> torch.nn.Module:
    """The CORAL loss over ``num_labels`` ordered classes. It takes no options: any key in
    ``train.loss_options`` is a ConfigError naming it, rather than being silently ignored."""
    if options:
        raise ConfigError(
            [f"train.loss_options.{key}: unknown option for loss 'coral' (it takes none)" for key in options]
        )
    return _module_classes()["CoralLoss"](num_labels)


ORDINAL = TaskHeadSpec(
    name="ordinal",
    build=build_head,
    probabilities=probabilities,
    default_loss="coral",
    trainable_parameters=head_parameters,
    description="CORAL ordinal head: K-1 'y > k' logits, one shared weight vector, ordered thresholds",
)
CORAL = LossSpec(
    name="coral",
    build=build_coral,
    description="CORAL loss: summed binary cross-entropies of the K-1 'y > k' targets (ordinal head)",
)


@hookimpl
def lorakit_register_task_heads(register: Callable[[TaskHeadSpec], None]) -> None:
    """Register the ``ordinal`` head."""
    register(ORDINAL)


@hookimpl
def lorakit_register_losses(register: Callable[[LossSpec], None]) -> None:
    """Register the ``coral`` loss."""
    register(CORAL)
