"""What a training run shows on a terminal: one progress bar for the whole run, the log lines above it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any


def on_terminal() -> bool:
    """True when a progress bar belongs on stderr: a terminal, and ``LORAKIT_NO_PROGRESS`` not set."""
    return sys.stderr.isatty() and not os.environ.get("LORAKIT_NO_PROGRESS")


def _is_console(handler: logging.Handler) -> bool:
    # tqdm's own test: a FileHandler is a StreamHandler too, but writes to its file
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)


def console_loggers(logger: logging.Logger) -> list[logging.Logger]:
    """``logger`` and the ancestors its records reach that write to stdout or stderr."""
    found: list[logging.Logger] = []
    current: logging.Logger | None = logger
    while current is not None:
        if any(_is_console(h) for h in current.handlers):
            found.append(current)
        if not current.propagate:
            break
        current = current.parent
    return found


class RunProgress:
    """One bar over the optimizer steps of every epoch left (a resumed run starts at its step; tqdm gives
    the ETA), described by the epoch, the loss last logged and the best metric so far. While it is open,
    console log lines are written above it through ``tqdm.write``, never into it; file handlers (train.log)
    are left as they are. ``enabled=False`` (off a terminal, not rank 0, ``echo=False``): no bar, and
    every method does nothing.

    Nothing here reads a device: the loss and the metric are host floats the loop already has.
    """

    def __init__(
        self,
        *,
        enabled: bool,
        logger: logging.Logger,
        metric: str,
        epochs: int,
        total: int,
        initial: int = 0,
        best: float | None = None,
    ):
        self.enabled = enabled
        self.logger = logger
        self.metric = metric
        self.epochs = epochs
        self.total = max(total, initial)
        self.initial = initial
        self.loss_value: float | None = None
        self.best_value = best
        self._bar: Any = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> RunProgress:
        if not self.enabled:
            return self
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # only loggers that print: tqdm's redirect would give a silent one a console handler of its own
        loggers = console_loggers(self.logger)
        if loggers:
            self._stack.enter_context(logging_redirect_tqdm(loggers=loggers))
        self._bar = self._stack.enter_context(
            tqdm(total=self.total, initial=self.initial, unit="step", leave=False, dynamic_ncols=True)
        )
        self._show()
        return self

    def __exit__(self, *exc: Any) -> None:
        # the bar goes first, then the redirect: the lines after the run print as plain lines again
        self._stack.close()
        self._bar = None

    def epoch(self, number: int) -> None:
        """Epoch ``number`` (1-based) starts."""
        if self._bar is not None:
            self._bar.set_description(f"epoch {number}/{self.epochs}")

    def step(self) -> None:
        """One optimizer step taken."""
        if self._bar is not None:
            self._bar.update(1)

    def update(self, *, loss: float | None = None, best: float | None = None) -> None:
        """A new loss (a host float, as logged) and/or best metric value to show."""
        if loss is not None:
            self.loss_value = loss
        if best is not None:
            self.best_value = best
        self._show()

    def _show(self) -> None:
        if self._bar is None:
            return
        parts = []
        if self.loss_value is not None:
            parts.append(f"loss {self.loss_value:.4f}")
        if self.best_value is not None:
            parts.append(f"best {self.metric} {self.best_value:.4f}")
        self._bar.set_postfix_str(", ".join(parts))
