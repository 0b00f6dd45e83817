"""``lorakit reproduce``: retrain an experiment from its frozen config and compare epoch by epoch."""

from __future__ import annotations

import click

from .browse import outputs_option


@click.command()
@click.argument("exp", metavar="EXP")
@click.option(
    "--as", "as_id", default=None, metavar="NEW_ID", help="The new experiment's id (default: EXP.repro<N>)."
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=None,
    help="Largest metric difference that still agrees (default: 0 on CPU, exact; 0.01 on a GPU).",
)
@click.option(
    "--epochs-only",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="Train and compare only the first K epochs (on the full run's learning-rate schedule).",
)
@outputs_option
def reproduce(
    exp: str, as_id: str | None, tolerance: float | None, epochs_only: int | None, outputs: str | None
) -> None:
    """Retrain EXP from its config_copy.toml into a new folder and compare each epoch's metrics.

    Refused (exit 2, nothing written) when the data no longer matches what EXP trained on; environment
    differences from EXP's requirements.lock are warnings. Exit 0 when the metrics agree, 1 when not."""
    from ..reproduce import reproduce as run
    from ..reproduce import table

    result = run(exp, as_id=as_id, outputs=outputs, tolerance=tolerance, echo=False, epochs_only=epochs_only)
    for line in result.environment:
        click.echo(f"warning: environment differs from {result.original}'s: {line}", err=True)
    click.echo(table(result))
    verdict = "agree" if result.agrees else "differ"
    click.echo(f"{result.reproduced} and {result.original} {verdict} (tolerance {result.tolerance:g})")
    raise SystemExit(0 if result.agrees else 1)
