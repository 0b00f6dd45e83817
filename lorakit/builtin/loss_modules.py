"""The built-in losses' ``nn.Module`` classes. This module imports torch: :mod:`lorakit.builtin.losses`
imports it only when a loss is built, so ``lorakit plugins`` starts without torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .losses import IGNORE_INDEX


class _WeightedLoss(torch.nn.Module):
    weight: torch.Tensor | None

    def __init__(self, class_weights: Sequence[float] | None) -> None:
        super().__init__()
        tensor = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        # Non-persistent: the weights come from the config, so they stay out of checkpoints, but as
        # a buffer they still follow `module.to(device)`.
        self.register_buffer("weight", tensor, persistent=False)

    def _weight_like(self, logits: torch.Tensor) -> torch.Tensor | None:
        # Also moved at call time: the loss is not always registered under the model, and under
        # mixed precision the logits' dtype is only known here.
        if self.weight is None:
            return None
        return self.weight.to(device=logits.device, dtype=logits.dtype)


class CrossEntropyLoss(_WeightedLoss):
    """``F.cross_entropy`` with per-class weights and label smoothing; rows labelled -100 are skipped."""

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__(class_weights)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # torch's mean, spelled out: the sum over labelled rows divided by their count (or their summed
        # class weights). torch's own gives NaN for a batch with no labelled row (0 / 0), which masked
        # labels make common; this gives 0 there, and needs no host sync to find out.
        weight = self._weight_like(logits)
        per_row = F.cross_entropy(
            logits,
            labels,
            weight=weight,
            label_smoothing=self.label_smoothing,
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        labelled = labels != IGNORE_INDEX
        if weight is None:
            total = labelled.sum().to(per_row.dtype)
        else:
            total = (weight.to(per_row.dtype)[labels.clamp_min(0)] * labelled).sum()
        return per_row.sum() / (total + (total == 0).to(total.dtype))

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, weighted={self.weight is not None}"


class FocalLoss(_WeightedLoss):
    """Mean over labelled rows of ``-alpha_y * (1 - p_y) ** gamma * log p_y``."""

    def __init__(self, class_weights: Sequence[float] | None = None, gamma: float = 2.0) -> None:
        super().__init__(class_weights)
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Half-precision log-softmax loses the small probabilities focal loss is all about.
        work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        keep = labels != IGNORE_INDEX
        work, target = work[keep], labels[keep]
        if target.numel() == 0:
            # No labelled rows in this batch: contribute nothing (and keep the graph) instead of NaN.
            return logits.sum() * 0.0
        log_p = F.log_softmax(work, dim=-1).gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -((1.0 - log_p.exp()) ** self.gamma) * log_p
        weight = self._weight_like(work)
        if weight is not None:
            loss = loss * weight[target]
        return loss.mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, weighted={self.weight is not None}"
