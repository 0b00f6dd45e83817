"""``lorakit index rebuild``: regenerate the experiment index from the experiment folders."""

from __future__ import annotations

import click

from .browse import outputs_option, short_path, warnings_to_stderr


@click.group()
def index() -> None:
    """Maintain the experiment index (outputs/experiment_index.json)."""


@index.command("rebuild")
@outputs_option
def rebuild(outputs: str | None) -> None:
    """Regenerate the index from the experiment folders (keeps the active experiment and its history)."""
    from ..runs.index import ExperimentIndex

    idx = ExperimentIndex(outputs)
    with warnings_to_stderr():
        entries = idx.rebuild()
        active = idx.active()
    click.echo(
        f"Rebuilt {short_path(idx.path)}: {len(entries)} experiment{'s' if len(entries) != 1 else ''}"
        + (f" (active: {active})" if active else "")
        + "."
    )
