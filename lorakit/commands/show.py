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
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON: run, metrics, reports, env, label_map, config."
)
@click.option(
    "--plot",
    is_flag=True,
    help="Also write EXP/report.png: confusion matrices and per-epoch curves (needs lorakit[plot]).",
)
@outputs_option
def show(exp_id: str, as_json: bool, plot: bool, outputs: str | None) -> None:
    """Show one experiment: status, best metrics, per-epoch metrics, per-class figures and confusion
    matrices of the best epoch, paths, environment, config."""
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
    reports = layout.read_reports()
    env = layout.read_env()
    label_map = layout.read_label_map()
    config = layout.read_config_copy()
    config_text = read_text(layout.config_copy) if config is not None else ""
    if as_json:
        payload = {
            "run": run.to_json(),
            "metrics": metrics,
            "reports": reports,
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
    out += _classes_block(reports)
    out += ["", "Paths", *_paths_block(layout)]
    out += ["", "Environment", *_fields_block(_env(run, env))]
    out += ["", f"Config ({short_path(layout.config_copy)})"]
    out += ["  " + line for line in config_text.rstrip("\n").splitlines()] if config_text else ["  (missing)"]
    click.echo("\n".join(out))
    if plot:
        from ..runs.plots import write_report_png
        from ..runs.rows import epochs_in_order

        png = write_report_png(
            layout.root / "report.png", exp_id, reports, epochs_in_order(metrics), run.headline
        )
        click.echo(f"Wrote {short_path(png)}")


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


def _classes_block(reports: dict[str, Any], worst: int = 3) -> list[str]:
    """The best epoch's confusion matrix per task (rows true, columns predicted) and its worst classes."""
    best = reports.get("best") or {}
    if not best.get("tasks"):
        return []
    out = ["", f"Per class (best epoch {best.get('epoch')}; rows true, columns predicted)"]
    for task, report in best["tasks"].items():
        out += ["  " + line for line in _matrix_lines(task, report["labels"], report["confusion"])]
        ranked = sorted(report["classes"].items(), key=lambda item: item[1]["f1"])[:worst]
        lines = [
            f"{label} f1 {c['f1']:.4f} (precision {c['precision']:.4f}, recall {c['recall']:.4f}, "
            f"support {c['support']})"
            for label, c in ranked
        ]
        out += [f"  worst: {lines[0]}", *(f"         {line}" for line in lines[1:]), ""]
    return out[:-1]


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal: East Asian wide characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _matrix_lines(task: str, labels: list[str], matrix: list[list[int]]) -> list[str]:
    """A confusion matrix as aligned text, label names of any script included."""
    cells = [[task, *labels], *([label, *map(str, row)] for label, row in zip(labels, matrix, strict=True))]
    widths = [max(_width(row[c]) for row in cells) for c in range(len(cells[0]))]

    def line(row: list[str]) -> str:
        first = row[0] + " " * (widths[0] - _width(row[0]))
        rest = (" " * (w - _width(cell)) + cell for cell, w in zip(row[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return [line(cells[0]), *(line(row) for row in cells[1:])]


def _paths_block(layout: RunLayout) -> list[str]:
    return [
        f"  {name:<13} {short_path(path)}{'' if path.exists() else '  (missing)'}"
        for name, path in (
            ("folder", layout.root),
            ("adapter", layout.adapter_dir),
            ("config", layout.config_copy),
            ("label_map", layout.label_map),
            ("metrics", layout.metrics),
            ("reports", layout.reports),
            ("log", layout.train_log),
        )
    ]


def _env(run: RunInfo, env: dict[str, Any]) -> list[tuple[str, Any]]:
    from ..runs.rows import env_fields

    return env_fields(run, env)


def _fields_block(fields: list[tuple[str, Any]]) -> list[str]:
    return [f"  {name:<13} {value}" for name, value in fields if value not in (None, "")]
