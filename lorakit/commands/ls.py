"""``lorakit ls``: every experiment, one row each, from the index (no torch, no pandas)."""

from __future__ import annotations

from typing import Any

import click

from .browse import cell, echo_warning, filter_options, outputs_option, render, warnings_to_stderr


@click.command()
@click.option("--table", "fmt", flag_value="table", default=True, help="Aligned table (default).")
@click.option("--json", "fmt", flag_value="json", help="JSON list of rows.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")
@filter_options
@outputs_option
def ls(fmt: str, filters: tuple[str, ...], sort_by: str | None, asc: bool, outputs: str | None) -> None:
    """List experiments, oldest first; * marks the active one (lorakit rollback)."""
    from ..runs.index import ExperimentIndex
    from ..runs.query import ConfigCopies, apply_filters, default_order, label_set_warning, sort_ids
    from ..runs.rows import LS_COLUMNS, common_headline, ls_rows

    index = ExperimentIndex(outputs)
    with warnings_to_stderr():
        data = index.load()
        entries, active = data["experiments"], data["active"].get("exp_id")
        configs = ConfigCopies(index.root, entries)
        selected = apply_filters(entries, filters, configs)
        ids = default_order(selected)
        if sort_by:
            ids = sort_ids(ids, selected, sort_by, ascending=asc, configs=configs)
        ids = configs.intact(ids)
    if sort_by:
        echo_warning(label_set_warning(selected, ids))

    common = common_headline(selected, ids)
    extra = sort_by if sort_by and sort_by != common else None
    rows = ls_rows(selected, ids, active=active, extra=extra, configs=configs)
    if fmt in ("json", "csv"):
        click.echo(render(list(rows[0]) if rows else list(LS_COLUMNS), rows, fmt))
        return
    if not rows:
        where = " matching the filters" if filters else ""
        click.echo(f"No experiments{where} in {index.root}.", err=True)
        return
    _echo_table(rows, common=common, extra=extra)
    if active in {row["exp_id"] for row in rows}:
        click.echo("* active experiment (lorakit rollback)")


def _echo_table(rows: list[dict[str, Any]], *, common: str, extra: str | None) -> None:
    from ..runs.rows import ls_table_row

    table = [
        ls_table_row(row, common=common, best=cell(row["best"], metric=True), extra=extra) for row in rows
    ]
    metrics = [common] + ([extra] if extra else [])
    click.echo(render(list(table[0]), table, "table", metrics=metrics))
