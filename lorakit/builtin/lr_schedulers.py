"""Built-in learning-rate schedules, each with linear warmup from 0: linear, cosine, constant.

Each is a ``torch.optim.lr_scheduler.LambdaLR`` (so its ``state_dict`` round-trips on resume) whose
multiplier is a ``functools.partial`` of a module-level function, so schedulers also pickle. The curves
match the ``transformers`` schedules of the same names, without depending on transformers; past
``num_training_steps`` linear and cosine stay at 0 instead of transformers' cosine rising again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from lorakit.hookspecs import hookimpl
from lorakit.specs import LRSchedulerSpec


def _warmup(step: int, num_warmup_steps: int) -> float | None:
    """The warmup multiplier ``step / warmup`` while warming up, else None."""
    if step < num_warmup_steps:
        return step / max(1, num_warmup_steps)
    return None


def _decay_progress(step: int, num_warmup_steps: int, num_training_steps: int) -> float:
    """How far through the post-warmup phase ``step`` is, clamped to ``[0, 1]``."""
    progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
    return min(1.0, max(0.0, progress))


def linear_multiplier(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    """Warm up linearly to 1, then decay linearly to 0 at ``num_training_steps``."""
    warm = _warmup(step, num_warmup_steps)
    if warm is not None:
        return warm
    return 1.0 - _decay_progress(step, num_warmup_steps, num_training_steps)


def cosine_multiplier(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    """Warm up linearly to 1, then follow half a cosine down to 0 at ``num_training_steps``."""
    warm = _warmup(step, num_warmup_steps)
    if warm is not None:
        return warm
    progress = _decay_progress(step, num_warmup_steps, num_training_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def constant_multiplier(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    """Warm up linearly to 1, then stay at 1."""
    warm = _warmup(step, num_warmup_steps)
    return 1.0 if warm is None else warm


def _lambda_lr(
    optimizer: Any, multiplier: Callable[..., float], num_warmup_steps: int, num_training_steps: int
) -> Any:
    import torch

    # Bugs in the trainer's step arithmetic, not user mistakes: the config layer validates its keys.
    if num_warmup_steps < 0 or num_training_steps < 0:
        raise ValueError(
            f"warmup and training steps must be >= 0, got {num_warmup_steps} and {num_training_steps}"
        )
    lr_lambda = functools.partial(
        multiplier, num_warmup_steps=int(num_warmup_steps), num_training_steps=int(num_training_steps)
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def build_linear(optimizer: Any, num_warmup_steps: int, num_training_steps: int) -> Any:
    """A ``LambdaLR`` following :func:`linear_multiplier`; steps count optimizer steps."""
    return _lambda_lr(optimizer, linear_multiplier, num_warmup_steps, num_training_steps)


def build_cosine(optimizer: Any, num_warmup_steps: int, num_training_steps: int) -> Any:
    """A ``LambdaLR`` following :func:`cosine_multiplier`; steps count optimizer steps."""
    return _lambda_lr(optimizer, cosine_multiplier, num_warmup_steps, num_training_steps)


def build_constant(optimizer: Any, num_warmup_steps: int, num_training_steps: int) -> Any:
    """A ``LambdaLR`` following :func:`constant_multiplier`; steps count optimizer steps."""
    return _lambda_lr(optimizer, constant_multiplier, num_warmup_steps, num_training_steps)


_SCHEDULES: tuple[tuple[str, Callable[..., Any], str], ...] = (
    ("linear", build_linear, "linear warmup, then linear decay to 0"),
    ("cosine", build_cosine, "linear warmup, then half-cosine decay to 0"),
    ("constant", build_constant, "linear warmup, then constant"),
)


@hookimpl
def lorakit_register_lr_schedulers(register: Callable[[LRSchedulerSpec], None]) -> None:
    """Register the ``linear``, ``cosine`` and ``constant`` schedules."""
    for name, build, description in _SCHEDULES:
        register(LRSchedulerSpec(name=name, build=build, description=description))
