"""Built-in data sources: csv, tsv, jsonl, json and parquet files, read into a pandas DataFrame.

Text formats are read as bytes once and decoded by us, not by pandas, so that an undecodable byte is
reported with its offset and row and the user is told which setting reads the file anyway. Every
problem a user can fix becomes a one-line ``DataError`` naming the file.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit.errors import DataError
from lorakit.hookspecs import hookimpl
from lorakit.readback import not_regular
from lorakit.specs import DataSourceSpec, ReadOptions

if TYPE_CHECKING:
    import pandas as pd

ENCODING_ERRORS = ("strict", "replace", "ignore")


def _one_line(text: object) -> str:
    """Collapse a parser message (pandas and pyarrow ones span lines) so the CLI prints one line."""
    return " ".join(str(text).split())


def _no_rows(path: str | Path) -> DataError:
    return DataError(f"{path}: the file has no rows")


def _read_bytes(path: str | Path) -> bytes:
    try:
        kind = not_regular(os.stat(path).st_mode)
        if kind not in (None, "a directory"):  # a FIFO would block for ever (a folder fails below)
            raise DataError(f"{path}: not a regular file ({kind})")
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {_one_line(exc.strerror or exc)}") from None


def _decode(path: str | Path, options: ReadOptions, header_lines: int | None) -> str:
    """Read and decode ``path`` once.

    A failure's position is given as a data row counted from 1 below ``header_lines`` lines of
    header (physical lines, so a quoted multi-line field shifts it: good enough to find the spot), or
    as a line number when ``header_lines`` is None (a JSON document has no rows to speak of).
    """
    data = _read_bytes(path)
    if not data:
        raise _no_rows(path)
    if options.encoding_errors not in ENCODING_ERRORS:
        raise DataError(
            f"{path}: data.encoding_errors must be one of {', '.join(ENCODING_ERRORS)}, "
            f"got {options.encoding_errors!r}"
        )
    try:
        text = data.decode(options.encoding, options.encoding_errors)
    except LookupError:
        raise DataError(f"{path}: unknown encoding {options.encoding!r} (data.encoding)") from None
    except UnicodeDecodeError as exc:
        # Decode the good prefix to count lines: counting b"\n" would be wrong for UTF-16 and friends.
        line = data[: exc.start].decode(options.encoding, "replace").count("\n") + 1
        where = f"line {line}"
        if header_lines is not None:
            where = "header" if line <= header_lines else f"row {line - header_lines}"
        raise DataError(
            f"{path}: not valid {options.encoding} at byte {exc.start} ({where}); "
            'set data.encoding or data.encoding_errors = "replace" to read it anyway'
        ) from None
    # A BOM decodes to U+FEFF under "utf-8"; left in, it would glue itself to the first column's name.
    return text.removeprefix("\ufeff")


def _checked(path: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    if len(frame) == 0:
        raise _no_rows(path)
    return frame


def _read_delimited(path: str | Path, options: ReadOptions, sep: str) -> pd.DataFrame:
    import pandas as pd

    text = _decode(path, options, header_lines=1)
    try:
        # No dtype=str: numeric columns stay numeric because later code bins them.
        # only an empty cell is missing: a label or text that reads "NA", "None" or "null" stays itself
        frame = pd.read_csv(io.StringIO(text), sep=sep, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise _no_rows(path) from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{path}: cannot parse: {_one_line(exc)}") from None
    return _checked(path, frame)


def read_csv(path: str | Path, options: ReadOptions | None = None) -> pd.DataFrame:
    """Read a comma-separated file with a header row."""
    return _read_delimited(path, options or ReadOptions(), ",")


def read_tsv(path: str | Path, options: ReadOptions | None = None) -> pd.DataFrame:
    """Read a tab-separated file with a header row."""
    return _read_delimited(path, options or ReadOptions(), "\t")


def _frame_from_records(path: str | Path, records: list[Any], where: Callable[[int], str]) -> pd.DataFrame:
    import pandas as pd

    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: {where(i)}: expected a JSON object, got {type(record).__name__}")
    return _checked(path, pd.DataFrame.from_records(records))


def read_jsonl(path: str | Path, options: ReadOptions | None = None) -> pd.DataFrame:
    """Read JSON Lines: one JSON object per line; blank lines are skipped."""
    text = _decode(path, options or ReadOptions(), header_lines=0)
    records: list[Any] = []
    line_numbers: list[int] = []
    # Parsed line by line (not pandas.read_json) so an error can name its line, and so strings
    # that look like dates or numbers are not converted behind the user's back.
    # split("\n"), not splitlines(): JSON strings may legally hold raw U+2028 or U+0085, which
    # splitlines() would treat as line breaks; a trailing "\r" is JSON whitespace.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {number}: invalid JSON: {_one_line(exc.msg)} at column {exc.colno}"
            ) from None
        line_numbers.append(number)
    return _frame_from_records(path, records, lambda i: f"line {line_numbers[i]}")


def read_json(path: str | Path, options: ReadOptions | None = None) -> pd.DataFrame:
    """Read a JSON array of records, or an object of columns (pandas' ``columns`` orient, or lists)."""
    import pandas as pd

    text = _decode(path, options or ReadOptions(), header_lines=None)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON: {_one_line(exc)}") from None
    if isinstance(obj, list):
        return _frame_from_records(path, obj, lambda i: f"item {i}")
    if isinstance(obj, dict):
        columns = list(obj.values())
        if columns and all(isinstance(c, dict) for c in columns):
            # pandas' "columns" orient: {column: {index: value}}; the index labels carry no meaning here.
            return _checked(path, pd.DataFrame(obj).reset_index(drop=True))
        if columns and all(isinstance(c, list) for c in columns):
            if len({len(c) for c in columns}) != 1:
                raise DataError(f"{path}: the columns have different lengths")
            return _checked(path, pd.DataFrame(obj))
        if not columns:
            raise _no_rows(path)
    raise DataError(
        f"{path}: expected a JSON array of records or an object of columns, got {type(obj).__name__}"
    )


def read_parquet(path: str | Path, options: ReadOptions | None = None) -> pd.DataFrame:
    """Read a Parquet file with pyarrow. ``options`` are ignored: Parquet strings are always UTF-8."""
    import pandas as pd

    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {_one_line(exc.strerror or exc)}") from None
    if size == 0:
        raise _no_rows(path)
    try:
        frame = pd.read_parquet(path, engine="pyarrow")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {_one_line(exc.strerror or exc)}") from None
    except Exception as exc:  # pyarrow raises many unrelated types for a corrupt file; all mean "bad file"
        raise DataError(f"{path}: not a readable Parquet file: {_one_line(exc)}") from None
    return _checked(path, frame)


_SOURCES: tuple[tuple[str, tuple[str, ...], Callable[..., Any], str], ...] = (
    ("csv", (".csv",), read_csv, "comma-separated values with a header row"),
    ("tsv", (".tsv", ".tab"), read_tsv, "tab-separated values with a header row"),
    ("jsonl", (".jsonl", ".ndjson"), read_jsonl, "JSON Lines: one object per line"),
    ("json", (".json",), read_json, "a JSON array of records, or an object of columns"),
    ("parquet", (".parquet", ".pq"), read_parquet, "Apache Parquet (via pyarrow)"),
)


@hookimpl
def lorakit_register_data_sources(register: Callable[[DataSourceSpec], None]) -> None:
    """Register the csv, tsv, jsonl, json and parquet readers."""
    for name, suffixes, read, description in _SOURCES:
        register(DataSourceSpec(name=name, suffixes=suffixes, read=read, description=description))
