"""``lorakit compare``: experiments side by side, from the index (no torch, no pandas)."""

from __future__ import annotations

import click

from .browse import echo_warning, filter_options, outputs_option, render, warnings_to_stderr


@click.command()
@click.argument("experiments", nargs=-1, metavar="[EXP]...")
@filter_options
@click.option("--only-changed", is_flag=True, help="Show only the config keys that differ between them.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "markdown"]),
    default="table",
    show_default=True,
)
@outputs_option
def compare(
    experiments: tuple[str, ...],
    filters: tuple[str, ...],
    sort_by: str | None,
    asc: bool,
    only_changed: bool,
    fmt: str,
    outputs: str | None,
) -> None:
    """Compare experiments side by side: key params (or changed config keys) and best-epoch metrics.

    EXP may be a glob (exp_v4*); without EXP every experiment is compared.
    """
    from ..runs.index import ExperimentIndex
    from ..runs.query import (
        ConfigCopies,
        apply_filters,
        compare_rows,
        default_order,
        label_set_warning,
        select,
        sort_ids,
    )

    index = ExperimentIndex(outputs)
    with warnings_to_stderr():
        entries = index.entries()
        ids = (
            select(entries, experiments, lambda name: index.unknown_message(name, entries))
            if experiments
            else None
        )
        pool = {i: entries[i] for i in ids} if ids is not None else entries
        configs = ConfigCopies(index.root, entries)
        selected = apply_filters(pool, filters, configs)
        order = [i for i in ids if i in selected] if ids is not None else default_order(selected)
        if sort_by:
            order = sort_ids(order, selected, sort_by, ascending=asc, configs=configs)
        if only_changed:
            for exp_id in order:  # read every copy now: a damaged one leaves its experiment out
                configs.flat(exp_id)
        order = configs.intact(order)
    if len(order) > 1:
        echo_warning(label_set_warning(selected, order))
    if not order:
        if fmt == "json":
            click.echo("[]")
        else:
            click.echo(
                f"No experiments{' matching the filters' if filters else ''} in {index.root}.", err=True
            )
        return
    columns, rows = compare_rows(order, selected, only_changed=only_changed, configs=configs)
    if only_changed and len(order) < 2:
        click.echo("Warning: --only-changed needs two or more experiments to compare", err=True)
    first_metric = columns.index("best_epoch") + 1
    click.echo(render(columns, rows, fmt, metrics=columns[first_metric:]))
