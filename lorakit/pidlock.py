"""An exclusive ``flock`` on a file that names its holder: one scheduler per outputs folder, one run per
experiment folder.

The kernel drops the lock when the process dies, however it dies, so a crashed holder never leaves a stale
lock behind: the next process simply takes it. The holder writes its pid into the file for the message the
next one prints, and removes the file (and an emptied lock folder) when it is done, so a finished command
leaves nothing behind. A process that locked a file just removed checks the inode and tries again.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class PidLock:
    """``with PidLock(path, busy):`` — ``busy(pid_or_None)`` builds the exception raised when another
    process holds ``path``."""

    def __init__(
        self, path: str | Path, busy: Callable[[int | None], Exception], *, own_folder: bool = False
    ):
        self.path = Path(path)
        self._busy = busy
        self._own_folder = own_folder  # the lock folder is ours alone: remove it once it is empty
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        folder = self.path.parent
        while True:
            if folder.exists() and not folder.is_dir():  # mkdir would say "File exists", which misleads
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
            folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o664)
            except FileNotFoundError:  # the folder was removed by a holder that just finished
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._busy(holder_pid(self.path)) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # we locked a file its holder removed on release: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # still holding it: nobody else can have it now
            os.close(self._fd)  # closing drops the flock
            self._fd = None
            if self._own_folder:
                with contextlib.suppress(OSError):
                    self.path.parent.rmdir()  # only when empty

    def __enter__(self) -> PidLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


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
