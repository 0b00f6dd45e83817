"""``lorakit plugins``: what is installed, from which distribution, and what it registered."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the stable shape).")
def plugins(as_json: bool) -> None:
    """List plugins with their distribution, version, hooks and registered names."""
    from ..plugins import Plugins, new_manager

    # Failures are listed in the output; printing them on stderr too would say it twice.
    rows = Plugins(new_manager(report=lambda _msg: None)).describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for row in rows:
        dist = f"{row['distribution'] or '?'} {row['version'] or ''}".strip()
        if row["error"]:
            click.echo(f"{row['name']} ({dist}): failed to load: {row['error']}")
            continue
        click.echo(f"{row['name']} ({dist}, {row['kind']})")
        for kind, names in sorted(row["registered"].items()):
            click.echo(f"  {kind}: {', '.join(names)}")
        other = [h for h in row["hooks"] if not h.startswith("lorakit_register_")]
        if other:
            click.echo(f"  hooks: {', '.join(other)}")
