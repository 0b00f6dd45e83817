"""What the browsing commands share: their options, warnings as one line each, and tables.

The commands themselves are ``lorakit ls`` (:mod:`.ls`), ``compare`` (:mod:`.compare`), ``show``
(:mod:`.show`), ``rollback`` (:mod:`.rollback`) and ``index rebuild`` (:mod:`.index`).

``ls`` and ``compare`` read only the index (plus ``config_copy.toml`` files when a dotted config key is
asked for); none of these commands imports torch, transformers, peft or pandas. A damaged file is one line:
``show`` and ``rollback`` stop on it (exit 2); ``ls``, ``compare`` and ``index rebuild`` leave that
experiment out and name the file in a warning.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

SPARK = "▁▂▃▄▅▆▇█"
MAX_CELL = 40


def outputs_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--outputs``: the outputs folder."""
    return click.option(
        "--outputs",
        type=click.Path(file_okay=False),
        default=None,
        help="Outputs folder (default: $LORAKIT_OUTPUTS, else ./outputs).",
    )(func)


def filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--filter``, ``--sort-by`` and ``--asc``, as ``ls`` and ``compare`` take them."""
    func = click.option("--asc", is_flag=True, help="Sort ascending (default: descending).")(func)
    func = click.option(
        "--sort-by",
        metavar="KEY",
        help="Sort by a best-epoch metric (avg_f1, risk_level_f1...) or any filter key.",
    )(func)
    return click.option(
        "--filter",
        "filters",
        multiple=True,
        metavar="KEY<op>VALUE",
        help="Keep matching experiments: op = != > >= < <=, glob exp_id=exp_v4*, a|b for OR; repeat for AND.",
    )(func)


@contextlib.contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Print the index's warnings as ``Warning: ...`` lines instead of Python's file:line format."""
    import warnings

    from ..runs.index import IndexWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IndexWarning)
        try:
            yield
        finally:
            for item in caught:
                if issubclass(item.category, IndexWarning):
                    click.echo(f"Warning: {item.message}", err=True)
                else:
                    warnings.showwarning(item.message, item.category, item.filename, item.lineno)


def short_path(path: str | Path) -> str:
    """``path`` relative to the working folder when it is inside it."""
    path = Path(path)
    with contextlib.suppress(ValueError):
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    return str(path)


def cell(value: Any, *, metric: bool = False, limit: int | None = MAX_CELL) -> str:
    """A value as a table shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4f}" if metric else f"{value:g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def render(columns: list[str], rows: list[dict[str, Any]], fmt: str, metrics: Sequence[str] = ()) -> str:
    """Rows as table (tabulate), markdown, csv or json; values stay raw in csv and json."""
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False)
    if fmt == "csv":
        from ..runs.query import as_text

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([as_text(row.get(name)) for name in columns])
        return buffer.getvalue().rstrip("\n")
    from tabulate import tabulate

    body = [[cell(row.get(name), metric=name in metrics) for name in columns] for row in rows]
    if fmt == "markdown":  # a | inside a cell would end it
        body = [[text.replace("|", "\\|") for text in line] for line in body]
    align = [
        "right" if any(r[i] for r in body) and all(_is_number(r[i]) for r in body if r[i]) else "left"
        for i in range(len(columns))
    ]
    return tabulate(
        body,
        headers=columns,
        tablefmt="github" if fmt == "markdown" else "simple",
        disable_numparse=True,
        colalign=align,
    )


def echo_warning(message: str | None) -> None:
    """``Warning: <message>`` on stderr, when there is a message."""
    if message:
        click.echo(f"Warning: {message}", err=True)


def sparkline(values: Sequence[float]) -> str:
    """``▁▃▅█``: each value scaled between the smallest and the largest."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARK[3] * len(values)
    return "".join(SPARK[round((v - low) / (high - low) * (len(SPARK) - 1))] for v in values)
