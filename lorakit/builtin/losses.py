"""Built-in losses: cross-entropy (with class weights and label smoothing) and focal loss.

Options come from ``train.loss_options``; each builder validates them and raises ``ConfigError`` naming
the offending key, so a typo fails before any model is loaded rather than being silently ignored.

The ``nn.Module`` classes need torch, which this module must not import at load time (``lorakit
plugins`` starts fast). They live in :mod:`lorakit.builtin.loss_modules`, imported on first use and
exposed here through a module ``__getattr__``, so ``lorakit.builtin.losses.FocalLoss`` exists too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lorakit.errors import ConfigError
from lorakit.hookspecs import hookimpl
from lorakit.specs import LossSpec

if TYPE_CHECKING:
    import torch

# torch's own default; labels equal to it are skipped, so rows without a label for a task cost nothing.
IGNORE_INDEX = -100


def _reject_unknown(loss: str, options: Mapping[str, Any], known: Sequence[str]) -> None:
    """Raise one ConfigError listing every unknown option (all at once, so one edit fixes them)."""
    problems = [
        f"train.loss_options.{key}: unknown option for loss {loss!r} (known: {', '.join(sorted(known))})"
        for key in options
    ]
    if problems:
        raise ConfigError(problems)


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `gamma = true` is a config mistake, not 1.0.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_class_weights(class_weights: Any, num_labels: int) -> list[float] | None:
    """Validate ``class_weights`` (one positive number per class) and return them as floats."""
    if class_weights is None:
        return None
    key = "train.loss_options.class_weights"
    if hasattr(class_weights, "tolist"):  # a tensor or numpy array from programmatic callers
        class_weights = class_weights.tolist()
    if isinstance(class_weights, (str, bytes)) or not isinstance(class_weights, Sequence):
        raise ConfigError([f"{key}: must be a list of {num_labels} numbers, got {class_weights!r}"])
    if len(class_weights) != num_labels:
        raise ConfigError(
            [f"{key}: has {len(class_weights)} values but the task has {num_labels} labels; give one each"]
        )
    if not all(_is_number(w) and w > 0 for w in class_weights):
        # a class weighted 0 makes a batch of only that class 0 / 0 in the weighted mean
        raise ConfigError([f"{key}: every weight must be a finite number > 0, got {list(class_weights)!r}"])
    return [float(w) for w in class_weights]


def _module_classes() -> dict[str, type]:
    """The loss modules (defined in :mod:`lorakit.builtin.loss_modules`, which needs torch)."""
    from . import loss_modules

    return {"CrossEntropyLoss": loss_modules.CrossEntropyLoss, "FocalLoss": loss_modules.FocalLoss}


def __getattr__(name: str) -> Any:
    """Expose the lazily defined ``CrossEntropyLoss`` and ``FocalLoss`` classes as module attributes."""
    if name in ("CrossEntropyLoss", "FocalLoss"):
        return _module_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_cross_entropy(
    num_labels: int, class_weights: Any = None, label_smoothing: Any = 0.0, **options: Any
) -> torch.nn.Module:
    """Cross-entropy over ``num_labels`` logits, with optional per-class weights and label smoothing.

    Like ``torch.nn.functional.cross_entropy``, a weighted loss is the weighted mean (divided by the
    summed weights of the batch's labels).
    """
    _reject_unknown("cross_entropy", options, ("class_weights", "label_smoothing"))
    weights = _check_class_weights(class_weights, num_labels)
    if label_smoothing is None:
        label_smoothing = 0.0
    if not _is_number(label_smoothing) or not 0.0 <= label_smoothing < 1.0:
        # 1 would replace every target with the uniform distribution: nothing left to learn
        raise ConfigError(
            [f"train.loss_options.label_smoothing: must be a number in [0, 1), got {label_smoothing!r}"]
        )
    return _module_classes()["CrossEntropyLoss"](weights, float(label_smoothing))


def build_focal(
    num_labels: int, class_weights: Any = None, gamma: Any = 2.0, **options: Any
) -> torch.nn.Module:
    """Focal loss (Lin et al. 2017): mean over rows of ``-alpha_y * (1 - p_y) ** gamma * log p_y``.

    ``class_weights`` are the per-class ``alpha``. Unlike weighted cross-entropy, the result is a plain
    mean over rows (not divided by the summed weights), as in the paper; with ``gamma = 0`` and no
    weights it equals cross-entropy.
    """
    # Smoothing has no agreed meaning for focal loss; accept the neutral value so a config shared
    # with cross-entropy that says label_smoothing = 0 still works, and refuse anything else loudly.
    smoothing = options.pop("label_smoothing", 0.0)
    if smoothing not in (None, 0, 0.0):
        raise ConfigError(
            [
                "train.loss_options.label_smoothing: not supported by loss 'focal' "
                "(known: class_weights, gamma); use loss 'cross_entropy' for label smoothing"
            ]
        )
    _reject_unknown("focal", options, ("class_weights", "gamma"))
    weights = _check_class_weights(class_weights, num_labels)
    if not _is_number(gamma) or gamma < 0:
        raise ConfigError([f"train.loss_options.gamma: must be a number >= 0, got {gamma!r}"])
    return _module_classes()["FocalLoss"](weights, float(gamma))


_LOSSES: tuple[tuple[str, Callable[..., Any], str], ...] = (
    ("cross_entropy", build_cross_entropy, "softmax cross-entropy; options: class_weights, label_smoothing"),
    ("focal", build_focal, "focal loss for imbalanced classes; options: gamma (2.0), class_weights (alpha)"),
)


@hookimpl
def lorakit_register_losses(register: Callable[[LossSpec], None]) -> None:
    """Register ``cross_entropy`` and ``focal``."""
    for name, build, description in _LOSSES:
        register(LossSpec(name=name, build=build, description=description))
