"""One scheduler per outputs folder: an exclusive ``flock`` on ``<outputs>/scheduler.lock``
(:class:`lorakit.pidlock.PidLock`: a crashed scheduler never leaves a stale lock behind)."""

from __future__ import annotations

from pathlib import Path

from ..errors import LorakitError
from ..pidlock import PidLock, is_held
from ..pidlock import holder_pid as _holder_pid

LOCK_FILE = "scheduler.lock"


class SchedulerRunning(LorakitError):
    """Another scheduler holds this outputs folder."""


class SchedulerLock(PidLock):
    """``with SchedulerLock(outputs):`` — raises :class:`SchedulerRunning` when another process holds it."""

    def __init__(self, outputs: str | Path):
        self.root = Path(outputs)

        def busy(pid: int | None) -> Exception:
            return SchedulerRunning(
                f"a scheduler is already running for {self.root}"
                + (f" (pid {pid})" if pid else "")
                + "; add jobs to it with `lorakit submit`"
            )

        super().__init__(self.root / LOCK_FILE, busy)


def holder_pid(outputs: str | Path) -> int | None:
    """The pid written by the scheduler holding ``outputs``, or None (no lock file, or not readable)."""
    return _holder_pid(Path(outputs) / LOCK_FILE)


def scheduler_running(outputs: str | Path) -> bool:
    """True while some process holds the scheduler lock of ``outputs``."""
    return is_held(Path(outputs) / LOCK_FILE)
