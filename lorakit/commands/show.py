"""``lorakit show``: one experiment, from its folder: status, metrics per epoch, paths, environment, config."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from .browse import outputs_option, render, short_path, sparkline, warnings_to_stderr

if TYPE_CHECKING:
    from ..runs.layout import RunLayout
    from ..runs.record import RunInfo


@click.command()
@click.argument("exp_id", metavar="EXP")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: run, metrics, env, label_map, config.")
@outputs_option
def show(exp_id: str, as_json: bool, outputs: str | None) -> None:
    """Show one experiment: status, best metrics, per-epoch metrics, paths, environment, config."""
    from ..readback import read_text
    from ..runs.index import ExperimentIndex, ExperimentNotFound
    from ..runs.layout import RunLayout

    index = ExperimentIndex(outputs)
    layout = RunLayout(index.folder(exp_id))
    layout.require_run()
    if not layout.run_info.is_file():
        with warnings_to_stderr():
            message = index.unknown_message(exp_id)
        raise ExperimentNotFound(message)
    # every file is read (and checked) before anything is printed: a damaged one is the one line shown
    run = layout.read_run()
    metrics = layout.read_metrics()
    env = layout.read_env()
    label_map = layout.read_label_map()
    config = layout.read_config_copy()
    config_text = read_text(layout.config_copy) if config is not None else ""
    if as_json:
        payload = {
            "run": run.to_json(),
            "metrics": metrics,
            "env": env,
            "label_map": label_map,
            "config": config,
        }
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    with warnings_to_stderr():
        active = index.active()
    title = f"{exp_id}{' (active)' if exp_id == active else ''}"
    out = [title, "=" * len(title), *_summary(run, metrics)]
    out += ["", "Metrics", *_metrics_block(run, metrics)]
    out += ["", "Paths", *_paths_block(layout)]
    out += ["", "Environment", *_fields_block(_env(run, env))]
    out += ["", f"Config ({short_path(layout.config_copy)})"]
    out += ["  " + line for line in config_text.rstrip("\n").splitlines()] if config_text else ["  (missing)"]
    click.echo("\n".join(out))


def _summary(run: RunInfo, metrics: dict[str, Any]) -> list[str]:
    from ..runs.rows import summary_fields

    fields = summary_fields(run, metrics)
    width = max([13, *(len(name) for name, _ in fields)])
    return [f"  {name:<{width}} {value}" for name, value in fields if value not in (None, "")]


def _metrics_block(run: RunInfo, metrics: dict[str, Any]) -> list[str]:
    """The per-epoch table, then the headline's sparkline."""
    from ..runs.rows import best_block, epoch_rows, headline_series

    names, rows = epoch_rows(run, metrics)
    if not rows:
        return ["  (no epoch finished yet)"]
    table = render(["epoch", *names], rows, "table", metrics=names)
    out = ["  " + line for line in table.splitlines()]
    series = headline_series(run, metrics)
    if series:
        headline, best = run.headline, best_block(metrics)
        best_text = (
            f"  (best {best[headline]:.4f} at epoch {best.get('epoch')}, marked *)"
            if isinstance(best.get(headline), (int, float))
            else ""
        )
        out.append(f"  {headline}  {sparkline(series)}  {series[0]:.4f} → {series[-1]:.4f}" + best_text)
    return out


def _paths_block(layout: RunLayout) -> list[str]:
    return [
        f"  {name:<13} {short_path(path)}{'' if path.exists() else '  (missing)'}"
        for name, path in (
            ("folder", layout.root),
            ("adapter", layout.adapter_dir),
            ("config", layout.config_copy),
            ("label_map", layout.label_map),
            ("metrics", layout.metrics),
            ("log", layout.train_log),
        )
    ]


def _env(run: RunInfo, env: dict[str, Any]) -> list[tuple[str, Any]]:
    from ..runs.rows import env_fields

    return env_fields(run, env)


def _fields_block(fields: list[tuple[str, Any]]) -> list[str]:
    return [f"  {name:<13} {value}" for name, value in fields if value not in (None, "")]
