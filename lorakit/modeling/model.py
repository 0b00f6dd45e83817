"""The multi-task classifier: a shared (adapted) encoder, pooling, and one head per task.

One code path for 1, 2 or N tasks: a task is an entry in ``heads``, never a branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return hidden[:, 0]


class MultiTaskClassifier(nn.Module):
    """Encoder → pooled vector → ``{task: logits}``. Heads are keyed ``t0, t1, ...`` in task order
    (task names may hold characters a module name cannot)."""

    def __init__(self, encoder: nn.Module, heads: Sequence[nn.Module], tasks: Sequence[str], pooling: str):
        super().__init__()
        self.encoder = encoder
        self.tasks = list(tasks)
        self.heads = nn.ModuleDict({f"t{i}": head for i, head in enumerate(heads)})
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        return [self.heads[f"t{i}"](pooled) for i in range(len(self.tasks))]


class TaskLossCombiner(nn.Module):
    """Weighted sum of per-task losses; ``uncertainty`` learns the weights (Kendall et al., 2018):
    ``sum_t exp(-s_t) * L_t + s_t / 2`` with ``s_t = log sigma_t^2`` trained with the model."""

    def __init__(
        self, losses: Sequence[nn.Module], weights: Sequence[float] | None, uncertainty: bool = False
    ):
        super().__init__()
        self.losses = nn.ModuleList(losses)
        n = len(losses)
        self.register_buffer("weights", torch.tensor(list(weights) if weights else [1.0 / n] * n))
        self.log_vars = nn.Parameter(torch.zeros(n)) if uncertainty else None

    def forward(
        self, logits: Sequence[torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        per_task = torch.stack(
            [loss(out, labels[:, i]) for i, (loss, out) in enumerate(zip(self.losses, logits, strict=False))]
        )
        if self.log_vars is not None:
            total = (torch.exp(-self.log_vars) * per_task + 0.5 * self.log_vars).sum()
        else:
            weights: torch.Tensor = self.weights  # type: ignore[assignment]  # a registered buffer
            total = (weights * per_task).sum()
        return total, per_task.detach()


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes (adapter, heads, learned loss weights): what checkpoints hold."""
    return {name: p.detach().cpu().contiguous() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: nn.Module, state: dict[str, Any], *, source: object = None) -> None:
    """Copy ``state`` (as :func:`trainable_state` made it) into ``module``'s parameters.

    Weights that do not fit (names or shapes) come from a damaged or foreign file: with ``source`` (the
    file they were read from) that is :class:`~lorakit.errors.DamagedFile`, else a ``RuntimeError``.
    """
    own = dict(module.named_parameters())
    missing = [name for name, p in own.items() if p.requires_grad and name not in state]
    unexpected = [name for name in state if name not in own]
    problem = None
    if missing or unexpected:
        problem = f"does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
    else:
        wrong = [name for name, value in state.items() if tuple(value.shape) != tuple(own[name].shape)]
        if wrong:
            problem = f"does not fit the model: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}"
    if problem is not None:
        if source is not None:
            from ..errors import DamagedFile

            raise DamagedFile(source, problem)
        raise RuntimeError(f"checkpoint {problem}")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value.to(own[name].device, own[name].dtype))
