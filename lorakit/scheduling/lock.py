"""One scheduler per outputs folder: an exclusive ``flock`` on ``<outputs>/scheduler.lock``.

The kernel drops the lock when the process dies, however it dies, so a crashed scheduler never leaves a
stale lock behind. The holder writes its pid into the file for the message the next one prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import LorakitError

LOCK_FILE = "scheduler.lock"


class SchedulerRunning(LorakitError):
    """Another scheduler holds this outputs folder."""


class SchedulerLock:
    """``with SchedulerLock(outputs):`` — raises :class:`SchedulerRunning` when another process holds it."""

    def __init__(self, outputs: str | Path):
        self.root = Path(outputs)
        self.path = self.root / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = holder_pid(self.root)
            raise SchedulerRunning(
                f"a scheduler is already running for {self.root}"
                + (f" (pid {pid})" if pid else "")
                + "; add jobs to it with `lorakit submit`"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> SchedulerLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def holder_pid(outputs: str | Path) -> int | None:
    """The pid written by the scheduler holding ``outputs``, or None (no lock file, or not readable)."""
    try:
        text = (Path(outputs) / LOCK_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def scheduler_running(outputs: str | Path) -> bool:
    """True while some process holds the scheduler lock of ``outputs``."""
    import fcntl

    path = Path(outputs) / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock taken to test
    return False
