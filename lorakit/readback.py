"""Reading back what lorakit wrote: one validating reader per format, damage as one line.

Every file lorakit reads back from an experiment folder, the outputs folder or a checkpoint goes through
here. A file that is missing, empty, truncated, not UTF-8, not the format it should be, or the right
format with the wrong shape raises :class:`~lorakit.errors.DamagedFile`: ``<path>: damaged (<reason>)``,
which the CLI prints as one line with exit code 2; a command that can go on without the file catches it
and warns instead. Nothing here writes, repairs or deletes: a damaged file is the user's evidence.

The errors raised are also the built-in errors they stand for, so code written against ``json`` and
``open`` keeps working: :class:`MissingFile` is a ``FileNotFoundError``, :class:`NotAFile` an ``OSError``
and :class:`DamagedContent` a ``ValueError``.

Shapes are checked with small composable checks (``kind``, ``list_of``, ``dict_of``, ``one_of``,
``fields``), each ``check(value, where) -> problem | None``::

    RUN = fields({"status": one_of("running", "completed"), "tasks": dict_of(list_of(kind(str)))},
                 required=("status",))
    run = read_json(path, RUN)        # -> dict, or DamagedFile("key 'status' missing", ...)

No torch here: safetensors and torch checkpoint files are checked by their headers and zip directories.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import DamagedFile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Check = Callable[[Any, str], "str | None"]

# a safetensors header is a few KB; anything this large is not one (and must not be read into memory)
MAX_SAFETENSORS_HEADER = 100 * 2**20
MAX_REASON = 160


class MissingFile(DamagedFile, FileNotFoundError):
    """The file is not there (also a ``FileNotFoundError``)."""

    def __init__(self, path: object):
        super().__init__(path, "missing")


class NotAFile(DamagedFile, OSError):
    """A directory, FIFO, socket or device stands where the file should be (also an ``OSError``)."""


class DamagedContent(DamagedFile, ValueError):
    """The file is there but empty, truncated, undecodable or of the wrong shape (also a ``ValueError``)."""


def _short(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 1] + "…"


# ---- bytes and text -----------------------------------------------------------------------------------


def not_regular(mode: int) -> str | None:
    """What a path of stat ``mode`` is when it is not a regular file ("a FIFO", "a directory", ...), else
    None. Checked before opening: opening a FIFO for reading blocks until some writer comes."""
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


def check_file(path: str | Path) -> os.stat_result:
    """``path``'s stat when it is a regular file; :class:`MissingFile` or :class:`NotAFile` otherwise.

    Checked before opening: opening a FIFO for reading blocks until someone writes to it.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise MissingFile(path) from None
    except NotADirectoryError:  # a file stands where a folder on the way should be
        raise MissingFile(path) from None
    kind = not_regular(info.st_mode)
    if kind is not None:
        raise NotAFile(path, f"{kind}, not a file")
    return info


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes; a missing path or one that is not a regular file raises :class:`DamagedFile`.

    Other ``OSError`` (permission denied, I/O error) are faults of the machine and pass through.
    """
    check_file(path)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:  # removed between the stat and the read
        raise MissingFile(path) from None
    except IsADirectoryError:
        raise NotAFile(path, "a directory, not a file") from None


def decode_text(path: str | Path, data: bytes) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark is allowed); empty, binary or undecodable
    content raises :class:`DamagedContent`."""
    if not data.strip():
        raise DamagedContent(path, "empty")
    if b"\x00" in data:
        offset = data.index(b"\x00")
        raise DamagedContent(path, f"binary data, not text: NUL byte at offset {offset}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        if exc.end >= len(data) and exc.reason == "unexpected end of data":
            raise DamagedContent(path, "truncated: ends inside a UTF-8 character") from None
        raise DamagedContent(path, f"not UTF-8: byte 0x{bad} at offset {exc.start}") from None


def read_text(path: str | Path) -> str:
    """The file as UTF-8 text, checked as :func:`decode_text` does."""
    return decode_text(path, read_bytes(path))


# ---- shape checks -------------------------------------------------------------------------------------

_KIND_NAMES: dict[type, str] = {
    dict: "a JSON object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def describe(value: Any) -> str:
    """A JSON value's kind in words: ``a list``, ``a string``, ``null``..."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    for python, name in _KIND_NAMES.items():
        if isinstance(value, python):
            return name
    return type(value).__name__


def _where(where: str) -> str:
    return f"key {where!r}: " if where else ""


def kind(*types: type) -> Check:
    """The value is one of ``types`` (``bool`` is not an ``int``; an ``int`` is a ``float``)."""
    names = " or ".join(dict.fromkeys(_KIND_NAMES.get(t, t.__name__) for t in types))

    def check(value: Any, where: str) -> str | None:
        if isinstance(value, bool) and bool not in types:
            ok = False
        elif isinstance(value, int) and float in types:
            ok = True
        else:
            ok = isinstance(value, types)
        return None if ok else f"{_where(where)}expected {names}, got {describe(value)}"

    return check


def optional(check: Check) -> Check:
    """``check``, or null."""

    def either(value: Any, where: str) -> str | None:
        return None if value is None else check(value, where)

    return either


def one_of(*choices: object) -> Check:
    """The value is one of ``choices``."""
    shown = ", ".join(map(str, choices))

    def check(value: Any, where: str) -> str | None:
        if isinstance(value, (str, int, float, bool)) and value in choices:
            return None
        plain = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        got = repr(value) if plain else describe(value)
        return f"{_where(where)}expected one of {shown}, got {_short(got)}"

    return check


def list_of(item: Check) -> Check:
    """A list whose every item passes ``item``."""

    def check(value: Any, where: str) -> str | None:
        if not isinstance(value, list):
            return f"{_where(where)}expected a list, got {describe(value)}"
        for i, element in enumerate(value):
            problem = item(element, f"{where}[{i}]")
            if problem:
                return problem
        return None

    return check


def dict_of(item: Check) -> Check:
    """A JSON object whose every value passes ``item``."""

    def check(value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{_where(where)}expected a JSON object, got {describe(value)}"
        for key, element in value.items():
            problem = item(element, f"{where}.{key}" if where else str(key))
            if problem:
                return problem
        return None

    return check


def fields(spec: Mapping[str, Check], *, required: Iterable[str] = (), extra: Check | None = None) -> Check:
    """A JSON object: ``required`` keys present, each key of ``spec`` that is present passes its check,
    and (with ``extra``) every other key passes ``extra``. Unknown keys are allowed otherwise: a newer
    lorakit may add some."""
    required = tuple(required)

    def check(value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{_where(where)}expected a JSON object, got {describe(value)}"
        prefix = f"{where}." if where else ""
        for key in required:
            if key not in value:
                return f"key {prefix + key!r} missing"
        for key, element in value.items():
            sub = spec.get(key, extra)
            problem = sub(element, prefix + str(key)) if sub is not None else None
            if problem:
                return problem
        return None

    return check


OBJECT: Check = kind(dict)
NUMBER: Check = kind(float)
INTEGER: Check = kind(int)
STRING: Check = kind(str)


def validate(path: str | Path, value: Any, check: Check | None) -> Any:
    """``value`` when it passes ``check``; :class:`DamagedContent` naming the first problem otherwise."""
    if check is not None:
        problem = check(value, "")
        if problem:
            raise DamagedContent(path, _short(problem))
    return value


# ---- JSON and TOML ------------------------------------------------------------------------------------


def parse_json(path: str | Path, text: str) -> Any:
    """``text`` parsed as JSON; a document cut short says ``truncated``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        end = len(text.rstrip())
        if exc.pos >= end or exc.msg.startswith("Unterminated string"):
            raise DamagedContent(
                path, f"truncated: the JSON ends at line {exc.lineno} column {exc.colno}"
            ) from None
        raise DamagedContent(
            path, _short(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        ) from None
    except RecursionError:
        raise DamagedContent(path, "not JSON: nested too deeply") from None


def _read_unless_missing(path: str | Path, missing_ok: bool) -> bytes | None:
    """The file's bytes; None when it does not exist and ``missing_ok`` (else that is damage)."""
    try:
        return read_bytes(path)
    except MissingFile:
        if missing_ok:
            return None
        raise


def read_json(path: str | Path, check: Check | None = OBJECT, *, missing_ok: bool = False) -> Any:
    """A JSON file lorakit wrote, parsed and checked against ``check`` (default: a JSON object).

    ``missing_ok``: None when the file does not exist (an optional file: a run that has just started has
    no metrics yet). Everything else that is wrong raises :class:`DamagedFile`.
    """
    data = _read_unless_missing(path, missing_ok)
    if data is None:
        return None
    return validate(path, parse_json(path, decode_text(path, data)), check)


def read_toml(path: str | Path, check: Check | None = None, *, missing_ok: bool = False) -> Any:
    """A TOML file lorakit wrote (``config_copy.toml``), parsed and checked; as :func:`read_json`."""
    data = _read_unless_missing(path, missing_ok)
    if data is None:
        return None
    text = decode_text(path, data)
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DamagedContent(path, _short(f"not TOML: {exc}")) from None
    return validate(path, parsed, check)


# ---- binary formats -----------------------------------------------------------------------------------


def safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, its layout checked against the file's size (no torch).

    A safetensors file is an 8-byte little-endian header length, that many bytes of JSON naming each
    tensor's dtype, shape and ``data_offsets``, then the tensor bytes; the last offset ends the file.
    """
    size = check_file(path).st_size
    if size == 0:
        raise DamagedContent(path, "empty")
    if size < 8:
        raise DamagedContent(path, f"truncated: {size} bytes")
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length == 0 or length > MAX_SAFETENSORS_HEADER:
            raise DamagedContent(path, "not a safetensors file")
        if 8 + length > size:
            prefix = fh.read(1)
            reason = "truncated: ends inside the header" if prefix == b"{" else "not a safetensors file"
            raise DamagedContent(path, reason)
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DamagedContent(path, "not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise DamagedContent(path, "not a safetensors file: its header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not isinstance(info.get("dtype"), str)
            or not isinstance(info.get("shape"), list)
        ):
            raise DamagedContent(path, _short(f"not a safetensors file: tensor {name!r} is malformed"))
        end = max(end, offsets[1])
    data = size - 8 - length
    if data < end:
        raise DamagedContent(path, f"truncated: {size} bytes, its header says {8 + length + end}")
    if data > end:
        raise DamagedContent(path, f"{data - end} bytes longer than its header says")
    return header


def check_torch_file(path: str | Path) -> None:
    """A file written by ``torch.save`` (a zip archive holding ``<name>/data.pkl``), checked without torch:
    a file cut short loses the zip's directory, which sits at its end."""
    size = check_file(path).st_size
    if size == 0:
        raise DamagedContent(path, "empty")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":
        raise DamagedContent(path, "not a torch checkpoint file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise DamagedContent(path, f"truncated: {size} bytes, its zip directory is missing") from None
    if not any(name.endswith("data.pkl") for name in names):
        raise DamagedContent(path, "not a torch checkpoint file: a zip without data.pkl")


def load_failure(path: str | Path, exc: BaseException, what: str) -> DamagedContent:
    """A library's failure to load a file that passed the checks above, as one damaged line."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DamagedContent(path, _short(f"{what}: {message}"))


# ---- SQLite -------------------------------------------------------------------------------------------


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_sqlite_file(path: str | Path) -> None:
    """Why SQLite found ``path`` damaged, from its 100-byte header: not SQLite at all, or a header whose
    page count says more than the file holds (truncated). Called once SQLite has refused the file: the
    header alone proves nothing while another process may be writing (SQLite writes page 1, with the new
    count, before the pages that grow the file). An empty or absent file passes (SQLite creates it so)."""
    try:
        size = check_file(path).st_size
    except MissingFile:
        return
    if size == 0:
        return
    with open(path, "rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise DamagedContent(path, "not an SQLite database")
    (page_size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if page_size == 1 else page_size
    changes, pages = struct.unpack(">II", header[24:32])
    (valid_for,) = struct.unpack(">I", header[92:96])
    # the page count is trusted only when written by a SQLite that keeps it (version-valid-for matches)
    if pages and changes == valid_for and size < pages * page_size:
        raise DamagedContent(path, f"truncated: {size} bytes, its header says {pages * page_size}")


@contextmanager
def sqlite_errors(path: str | Path) -> Iterator[None]:
    """Turn SQLite's "file is not a database" and "database disk image is malformed" into
    :class:`DamagedFile`, with the header's reason when it has one. A busy or locked database
    (``OperationalError``) is not damage and passes."""
    import sqlite3

    try:
        yield
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError as exc:
        check_sqlite_file(path)
        reason = str(exc)
        if "not a database" in reason:
            reason = "not an SQLite database"
        elif "malformed" in reason:
            reason = "truncated or corrupt: SQLite says the database disk image is malformed"
        raise DamagedContent(path, _short(reason)) from None
