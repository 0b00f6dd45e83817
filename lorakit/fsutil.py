"""Atomic file writes: readers never see half a file, a crash never leaves one. Reading back goes through
:mod:`lorakit.readback`."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from . import readback


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # keep the mode of the file we replace; a new file gets the usual umask-based mode
        # (mkstemp alone would make it 0600, unreadable to the rest of a team sharing outputs/)
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without setting it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def dumps_json(data: Any) -> str:
    """JSON as lorakit writes it: indented, UTF-8 labels kept readable (not \\u-escaped)."""
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, dumps_json(data))


def read_json(path: str | Path, check: readback.Check | None = readback.OBJECT) -> Any:
    """A JSON file lorakit wrote, through the validating reader (:func:`lorakit.readback.read_json`).

    ``check`` is a shape check (default: a JSON object, which every file lorakit writes is). A missing
    file raises :class:`lorakit.readback.MissingFile` (a ``FileNotFoundError``); an empty, truncated,
    undecodable or mistyped one :class:`lorakit.readback.DamagedContent` (a ``ValueError``): both are
    :class:`lorakit.errors.DamagedFile`, one line ``<path>: damaged (<reason>)`` for the CLI.
    """
    return readback.read_json(path, check)
