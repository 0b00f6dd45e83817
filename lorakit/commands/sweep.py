"""``lorakit sweep``: one child config per grid point, each queued (the work is in :mod:`lorakit.sweep`)."""

from __future__ import annotations

from typing import Any

import click


@click.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option(
    "--grid",
    "grid",
    multiple=True,
    metavar="KEY=V1,V2",
    help="A config key and its values (TOML; repeat for more keys: every combination is a point). "
    "Default: the config's [sweep] grid.",
)
@click.option(
    "--random",
    "random_n",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Take N points of the grid, chosen by --seed (default: all of them).",
)
@click.option("--seed", type=int, default=None, help="Seed of --random's choice (default: 0).")
@click.option("--dry-run", is_flag=True, help="List the points and their exp_ids; write and queue nothing.")
@click.option(
    "--outputs",
    type=click.Path(file_okay=False),
    default=None,
    help="Outputs folder; holds the queue (default: $LORAKIT_OUTPUTS, else ./outputs).",
)
def sweep(
    config_path: str,
    grid: tuple[str, ...],
    random_n: int | None,
    seed: int | None,
    dry_run: bool,
    outputs: str | None,
) -> None:
    """Queue one experiment per point of a grid over CONFIG_PATH's keys.

    Each point gets a child config in <CONFIG_PATH's folder>/sweeps/<sweep id>/ that inherits
    CONFIG_PATH; rank them afterwards with `lorakit compare --filter sweep=<sweep id>`.
    """
    from ..sweep import parse_grid, plan_sweep, queue_sweep, write_sweep

    plan = plan_sweep(config_path, parse_grid(grid), random=random_n, seed=seed, outputs=outputs)
    if dry_run:
        _echo_points(plan)
        return
    write_sweep(plan)
    jobs = queue_sweep(plan)
    click.echo(f"sweep {plan.sweep_id}: {_count(plan)}, child configs in {plan.folder}")
    for job, point in zip(jobs, plan.points, strict=True):
        click.echo(f"job {job.id}: {job.exp_id} ({job.priority}) queued  {point.label}")
    click.echo(_next_steps(plan))


def _count(plan: Any) -> str:
    taken = len(plan.points)
    return f"{taken} point(s)" + (
        f" of a {plan.size}-point grid (seed {plan.seed})" if taken < plan.size else ""
    )


def _echo_points(plan: Any) -> None:
    """The dry run: the sweep's id, then one line per point (exp_id, values)."""
    click.echo(f"sweep {plan.sweep_id}: {_count(plan)}; dry run, nothing written or queued")
    width = max(len(point.exp_id) for point in plan.points)
    for point in plan.points:
        click.echo(f"  {point.exp_id.ljust(width)}  {point.label}")


def _next_steps(plan: Any) -> str:
    """How to run the queue (unless a scheduler runs it already) and how to rank the points."""
    from ..scheduling.lock import scheduler_running

    compare = (
        f"lorakit compare --filter sweep={plan.sweep_id} --sort-by {plan.headline} --outputs {plan.outputs}"
    )
    if scheduler_running(plan.outputs):
        return f"the running scheduler of {plan.outputs} runs them; then rank them: {compare}"
    return f"run them: lorakit scheduler --outputs {plan.outputs} --exit-when-done; then rank them: {compare}"
