"""``lorakit rollback``: make a completed experiment the active one, or go back to the previous one."""

from __future__ import annotations

import click

from .browse import outputs_option, short_path, warnings_to_stderr


@click.command()
@click.option("--exp-id", default=None, metavar="EXP", help="Experiment to make active (default: undo).")
@click.option(
    "--configs-dir",
    type=click.Path(file_okay=False),
    default="configs",
    show_default=True,
    help="Where the experiment's config is restored as <exp_id>.toml.",
)
@outputs_option
def rollback(exp_id: str | None, configs_dir: str, outputs: str | None) -> None:
    """Make a completed experiment the active one (undo: no --exp-id).

    The active experiment is what `lorakit predict` uses when no EXP is given. Its config_copy.toml is
    restored to CONFIGS_DIR/<exp_id>.toml when that file is missing or differs; the old file is kept
    as <exp_id>.toml.bak-<time>. Without --exp-id, go back to the previously active experiment.
    """
    from ..runs.index import ExperimentIndex
    from ..runs.rollback import rollback as do_rollback

    with warnings_to_stderr():
        result = do_rollback(exp_id, outputs=outputs, configs_dir=configs_dir)
    if not result.changed:
        click.echo(f"{result.exp_id} is already the active experiment.")
    else:
        verb = "Back to" if result.undo else "Active experiment:"
        click.echo(f"{verb} {result.exp_id} (was {result.previous or 'none'}).")
    target = short_path(result.config_path)
    source = short_path(ExperimentIndex(outputs).folder(result.exp_id))
    if result.config_action == "created":
        click.echo(f"Wrote {target} from {source}/config_copy.toml.")
    elif result.config_action == "restored":
        backup = short_path(result.backup_path) if result.backup_path else "?"
        click.echo(
            f"Restored {target} from {source}/config_copy.toml; the previous file is kept as {backup}."
        )
    elif result.config_action == "unchanged":
        click.echo(f"{target} already matches the experiment's config; left unchanged.")
    else:
        click.echo(f"{source}/config_copy.toml is missing; {target} left alone.", err=True)
