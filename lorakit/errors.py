"""Errors a user can fix. The CLI prints them as one line each and exits with code 2."""

from __future__ import annotations

import difflib
import errno
import os
import re
from collections.abc import Iterable


class LorakitError(Exception):
    """Base class for every error a user can fix (bad config, bad data, missing plugin...)."""

    exit_code = 2

    def lines(self) -> list[str]:
        """The message as the CLI prints it: one line per problem."""
        return [str(self)]


class ConfigError(LorakitError):
    """One or more problems with a config, each as ``key: problem (file)``."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))

    def lines(self) -> list[str]:
        return list(self.problems)


class DataError(LorakitError):
    """A problem with input data: a missing column, an unknown label, undecodable bytes."""


class PluginError(LorakitError):
    """A plugin is missing, clashes with another, or registered something invalid."""


class ResumeError(LorakitError):
    """A run cannot be resumed (or would be overwritten) as asked."""


class DamagedFile(LorakitError):
    """A file lorakit wrote and reads back is missing, truncated, mistyped or foreign: ``<path>: damaged (<reason>)``."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: damaged ({reason})")


class MachineError(LorakitError):
    """The machine refused a file operation (disk full, read-only, permission, FIFO...): ``<path>: <problem>``."""


class LorakitWarning(UserWarning):
    """Something the user should know that does not stop the command (a rebuilt cache, a rebuilt index)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``' (did you mean X?)'`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# What the machine said, in the words a user acts on. The errno's own text follows in brackets.
MACHINE_FAULTS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "name too long",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "not a directory",
    errno.EFBIG: "file too large",
    errno.ENXIO: "no such device (a FIFO or socket with no reader?)",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files",
    errno.EIO: "input/output error",
    errno.ELOOP: "too many levels of symbolic links",
}
# safetensors (Rust) and torch (C++) report a failed write in their own words, without an OSError
_OS_CODE = re.compile(r"\bcode: (\d+)\b|\[Errno (\d+)\]")
_OPAQUE_WRITE = ("file write failed", "PytorchStreamWriter failed", "Error while serializing")


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def machine_problem(exc: BaseException, where: object = None) -> str | None:
    """``<path>: disk full (No space left on device)`` when ``exc`` (or what caused it) is a fault of the
    machine, else None. ``where`` names the path when the error does not (torch and safetensors writers);
    an opaque write failure there counts as a full disk only when that disk has no space left."""
    for error in _chain(exc):
        if isinstance(error, OSError) and error.errno in MACHINE_FAULTS:
            path = error.filename if error.filename is not None else where
            prefix = f"{path}: " if path is not None else ""
            return f"{prefix}{MACHINE_FAULTS[error.errno]} ({os.strerror(error.errno)})"
        text = str(error)
        match = _OS_CODE.search(text)
        code = int(match.group(1) or match.group(2)) if match else None
        if code in MACHINE_FAULTS:
            prefix = f"{where}: " if where is not None else ""
            return f"{prefix}{MACHINE_FAULTS[code]} ({os.strerror(code)})"
        if where is not None and any(marker in text for marker in _OPAQUE_WRITE) and _disk_full(where):
            return f"{where}: disk full ({os.strerror(errno.ENOSPC)})"
    return None


def _disk_full(where: object) -> bool:
    path = os.fspath(where)  # type: ignore[call-overload]
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        stat = os.statvfs(path or ".")
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 1 << 20
