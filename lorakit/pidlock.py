"""An exclusive ``flock`` on a file that names its holder: one scheduler per outputs folder, one run per
experiment folder.

The kernel drops the lock when the process dies, however it dies, so a crashed holder never leaves a stale
lock behind: the next process simply takes it. The holder writes its pid into the file for the message the
next one prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class PidLock:
    """``with PidLock(path, busy):`` — ``busy(pid_or_None)`` builds the exception raised when another
    process holds ``path``."""

    def __init__(self, path: str | Path, busy: Callable[[int | None], Exception]):
        self.path = Path(path)
        self._busy = busy
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._busy(holder_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> PidLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def holder_pid(path: str | Path) -> int | None:
    """The pid written by the process holding ``path``, or None (no file, or not readable)."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def is_held(path: str | Path) -> bool:
    """True while some process holds the lock on ``path``."""
    import fcntl

    path = Path(path)
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
