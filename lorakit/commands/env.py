"""``lorakit env diff``: what differs between an experiment's environment and this one (or another's)."""

from __future__ import annotations

import click

from .browse import outputs_option


@click.group()
def env() -> None:
    """Compare the environments experiments were trained in (their requirements.lock)."""


@env.command("diff")
@click.argument("exp", metavar="EXP")
@click.argument("other", metavar="[OTHER_EXP]", required=False)
@outputs_option
def diff(exp: str, other: str | None, outputs: str | None) -> None:
    """What changed from EXP's environment to the current one (or OTHER_EXP's): packages added (+),
    removed (-) and changed (~), and hardware. No output and exit 0 when identical; exit 1 when they differ."""
    from ..errors import LorakitError
    from ..experiment import resolve_experiment
    from ..readback import read_text
    from ..runs import environment

    def snapshot(name: str) -> tuple[dict[str, str], dict[str, str]]:
        layout = resolve_experiment(name, outputs)
        if not layout.requirements_lock.exists():
            raise LorakitError(
                f"{layout.root}: no requirements.lock (trained before lorakit recorded the environment)"
            )
        return environment.parse_lock(read_text(layout.requirements_lock))

    old = snapshot(exp)
    new = snapshot(other) if other else environment.current()
    lines = environment.diff(old, new)
    for line in lines:
        click.echo(line)
    raise SystemExit(1 if lines else 0)
