"""``lorakit config show``: the merged, validated config, optionally with where each value came from."""

from __future__ import annotations

import json

import click


@click.group()
def config() -> None:
    """Inspect configs."""


@config.command("show")
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key (TOML value).")
@click.option("--provenance", is_flag=True, help="Show which file set each key.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {config, provenance}.")
def show(config_path: str, overrides: tuple[str, ...], provenance: bool, as_json: bool) -> None:
    """Print CONFIG_PATH merged with its bases and validated."""
    from ..config.render import provenance_lines, to_toml
    from ..config.schema import defaults_provenance, flatten_config, load_config, to_dict

    cfg, raw = load_config(config_path, overrides)
    sources = defaults_provenance(raw, cfg)
    if as_json:
        click.echo(json.dumps({"config": to_dict(cfg), "provenance": sources}, indent=2, ensure_ascii=False))
    elif provenance:
        click.echo("\n".join(provenance_lines(flatten_config(cfg), sources)))
    else:
        click.echo(to_toml(to_dict(cfg)), nl=False)
