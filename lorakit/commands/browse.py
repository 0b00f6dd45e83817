"""``lorakit ls``, ``compare``, ``show``, ``rollback`` and ``index rebuild``: find, compare and return to
experiments.

``ls`` and ``compare`` read only the index (plus ``config_copy.toml`` files when a dotted config key is
asked for); none of these commands imports torch, transformers, peft or pandas. A damaged file is one line:
``show`` and ``rollback`` stop on it (exit 2); ``ls``, ``compare`` and ``index rebuild`` leave that
experiment out and name the file in a warning.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

SPARK = "▁▂▃▄▅▆▇█"
MAX_CELL = 40


def _outputs_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--outputs",
        type=click.Path(file_okay=False),
        default=None,
        help="Outputs folder (default: $LORAKIT_OUTPUTS, else ./outputs).",
    )(func)


def _filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--asc", is_flag=True, help="Sort ascending (default: descending).")(func)
    func = click.option(
        "--sort-by",
        metavar="KEY",
        help="Sort by a best-epoch metric (avg_f1, risk_level_f1...) or any filter key.",
    )(func)
    return click.option(
        "--filter",
        "filters",
        multiple=True,
        metavar="KEY<op>VALUE",
        help="Keep matching experiments: op = != > >= < <=, glob exp_id=exp_v4*, a|b for OR; repeat for AND.",
    )(func)


@contextlib.contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Print the index's warnings as ``Warning: ...`` lines instead of Python's file:line format."""
    import warnings

    from ..runs.index import IndexWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IndexWarning)
        try:
            yield
        finally:
            for item in caught:
                if issubclass(item.category, IndexWarning):
                    click.echo(f"Warning: {item.message}", err=True)
                else:
                    warnings.showwarning(item.message, item.category, item.filename, item.lineno)


def _short_path(path: str | Path) -> str:
    path = Path(path)
    with contextlib.suppress(ValueError):
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    return str(path)


def _cell(value: Any, *, metric: bool = False, limit: int | None = MAX_CELL) -> str:
    """A value as a table shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4f}" if metric else f"{value:g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _render(columns: list[str], rows: list[dict[str, Any]], fmt: str, metrics: Sequence[str] = ()) -> str:
    """Rows as table (tabulate), markdown, csv or json; values stay raw in csv and json."""
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False)
    if fmt == "csv":
        from ..runs.query import as_text

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([as_text(row.get(name)) for name in columns])
        return buffer.getvalue().rstrip("\n")
    from tabulate import tabulate

    body = [[_cell(row.get(name), metric=name in metrics) for name in columns] for row in rows]
    if fmt == "markdown":  # a | inside a cell would end it
        body = [[cell.replace("|", "\\|") for cell in line] for line in body]
    align = [
        "right" if any(r[i] for r in body) and all(_is_number(r[i]) for r in body if r[i]) else "left"
        for i in range(len(columns))
    ]
    return tabulate(
        body,
        headers=columns,
        tablefmt="github" if fmt == "markdown" else "simple",
        disable_numparse=True,
        colalign=align,
    )


def _echo_warning(message: str | None) -> None:
    if message:
        click.echo(f"Warning: {message}", err=True)


# ---- ls -----------------------------------------------------------------------------------------------


@click.command()
@click.option("--table", "fmt", flag_value="table", default=True, help="Aligned table (default).")
@click.option("--json", "fmt", flag_value="json", help="JSON list of rows.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")
@_filter_options
@_outputs_option
def ls(fmt: str, filters: tuple[str, ...], sort_by: str | None, asc: bool, outputs: str | None) -> None:
    """List experiments, oldest first; * marks the active one (lorakit rollback)."""
    from ..runs.index import ExperimentIndex
    from ..runs.query import (
        MISSING,
        ConfigCopies,
        apply_filters,
        default_order,
        label_set_warning,
        resolve,
        sort_ids,
    )

    index = ExperimentIndex(outputs)
    with _warnings_to_stderr():
        data = index.load()
        entries, active = data["experiments"], data["active"].get("exp_id")
        configs = ConfigCopies(index.root, entries)
        selected = apply_filters(entries, filters, configs)
        ids = default_order(selected)
        if sort_by:
            ids = sort_ids(ids, selected, sort_by, ascending=asc, configs=configs)
        ids = configs.intact(ids)
    if sort_by:
        _echo_warning(label_set_warning(selected, ids))

    headlines = [selected[i].get("headline") or "avg_f1" for i in ids]
    common = max(set(headlines), key=headlines.count) if headlines else "avg_f1"
    extra = sort_by if sort_by and sort_by != common else None
    rows = []
    for exp_id in ids:
        entry = selected[exp_id]
        params = entry.get("key_params") or {}
        headline = entry.get("headline") or "avg_f1"
        row = {
            "exp_id": exp_id,
            "active": exp_id == active,
            "task_type": entry.get("task_type"),
            "model": params.get("model"),
            "rank": params.get("lora_rank"),
            "lr": params.get("lr"),
            "batch": params.get("batch_size"),
            "status": entry.get("status"),
            "headline": headline,
            "best": (entry.get("best_metrics") or {}).get(headline),
            "created": entry.get("create_time"),
            "device": entry.get("device_used"),
            "precision": entry.get("precision"),
        }
        if extra:
            value = resolve(exp_id, entry, extra, configs)
            row[extra] = None if value is MISSING else value
        rows.append(row)

    if fmt in ("json", "csv"):
        columns = (
            list(rows[0])
            if rows
            else [
                "exp_id",
                "active",
                "task_type",
                "model",
                "rank",
                "lr",
                "batch",
                "status",
                "headline",
                "best",
                "created",
                "device",
                "precision",
            ]
        )
        click.echo(_render(columns, rows, fmt))
        return
    if not rows:
        where = " matching the filters" if filters else ""
        click.echo(f"No experiments{where} in {index.root}.", err=True)
        return
    table = []
    for row in rows:
        best = _cell(row["best"], metric=True)
        if best and row["headline"] != common:
            best += f" ({row['headline']})"
        line = {
            "exp_id": row["exp_id"] + (" *" if row["active"] else ""),
            "task_type": row["task_type"],
            "model": str(row["model"] or "").rstrip("/").rsplit("/", 1)[-1],
            "rank": row["rank"],
            "lr": row["lr"],
            "batch": row["batch"],
            "status": row["status"],
            common: best,
        }
        if extra:
            line[extra] = row[extra]
        line["created"] = (row["created"] or "")[:16]
        line["device"] = row["device"]
        line["precision"] = row["precision"]
        table.append(line)
    metrics = [common] + ([extra] if extra else [])
    click.echo(_render(list(table[0]), table, "table", metrics=metrics))
    if active in {row["exp_id"] for row in rows}:
        click.echo("* active experiment (lorakit rollback)")


# ---- compare ------------------------------------------------------------------------------------------


@click.command()
@click.argument("experiments", nargs=-1, metavar="[EXP]...")
@_filter_options
@click.option("--only-changed", is_flag=True, help="Show only the config keys that differ between them.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "markdown"]),
    default="table",
    show_default=True,
)
@_outputs_option
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
    with _warnings_to_stderr():
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
        _echo_warning(label_set_warning(selected, order))
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
    click.echo(_render(columns, rows, fmt, metrics=columns[first_metric:]))


# ---- show ---------------------------------------------------------------------------------------------


def sparkline(values: Sequence[float]) -> str:
    """``▁▃▅█``: each value scaled between the smallest and the largest."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARK[3] * len(values)
    return "".join(SPARK[round((v - low) / (high - low) * (len(SPARK) - 1))] for v in values)


@click.command()
@click.argument("exp_id", metavar="EXP")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: run, metrics, env, label_map, config.")
@_outputs_option
def show(exp_id: str, as_json: bool, outputs: str | None) -> None:
    """Show one experiment: status, best metrics, per-epoch metrics, paths, environment, config."""
    from ..readback import read_text
    from ..runs.index import ExperimentIndex, ExperimentNotFound
    from ..runs.layout import RunLayout
    from ..runs.query import metric_order

    index = ExperimentIndex(outputs)
    layout = RunLayout(index.folder(exp_id))
    layout.require_run()
    if not layout.run_info.is_file():
        with _warnings_to_stderr():
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
        payload = {"run": run, "metrics": metrics, "env": env, "label_map": label_map, "config": config}
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    with _warnings_to_stderr():
        active = index.active()

    out: list[str] = []
    title = f"{exp_id}{' (active)' if exp_id == active else ''}"
    out += [title, "=" * len(title)]
    fields = [
        ("status", run.get("status")),
        ("created", run.get("create_time")),
        ("ended", run.get("end_time")),
        ("task_type", run.get("task_type")),
        ("best", _best_line(run, metrics)),
        ("base_config", run.get("base_config")),
        ("config_path", run.get("config_path")),
        ("error", run.get("error")),
    ]
    tasks = run.get("tasks") or {}
    for task, labels in tasks.items():
        fields.append((f"task {task}", ", ".join(map(str, labels))))
    fields += [(f"note {i + 1}", note) for i, note in enumerate(run.get("notes") or [])]
    width = max([13, *(len(name) for name, _ in fields)])
    out += [f"  {name:<{width}} {value}" for name, value in fields if value not in (None, "")]

    epochs = sorted(
        (
            (key, value)
            for key, value in metrics.items()
            if key.startswith("epoch_") and isinstance(value, dict)
        ),
        key=lambda item: int(item[0][6:]) if item[0][6:].isdigit() else 0,
    )
    best: dict[str, Any] = metrics["best"] if isinstance(metrics.get("best"), dict) else {}
    headline = run.get("headline_metric") or "avg_f1"
    out += ["", "Metrics"]
    if epochs:
        names = metric_order((n for _, v in epochs for n in v), [headline], tasks)
        rows = []
        for key, values in epochs:
            number = key[6:]
            mark = " *" if str(best.get("epoch")) == number else ""
            rows.append({"epoch": number + mark, **{n: values.get(n) for n in names}})
        table = _render(["epoch", *names], rows, "table", metrics=names)
        out += ["  " + line for line in table.splitlines()]
        series = [v[headline] for _, v in epochs if isinstance(v.get(headline), (int, float))]
        if series:
            out.append(
                f"  {headline}  {sparkline(series)}  {series[0]:.4f} → {series[-1]:.4f}"
                + (
                    f"  (best {best[headline]:.4f} at epoch {best.get('epoch')}, marked *)"
                    if isinstance(best.get(headline), (int, float))
                    else ""
                )
            )
    else:
        out.append("  (no epoch finished yet)")

    out += ["", "Paths"]
    out += [
        f"  {name:<13} {_short_path(path)}{'' if path.exists() else '  (missing)'}"
        for name, path in (
            ("folder", layout.root),
            ("adapter", layout.adapter_dir),
            ("config", layout.config_copy),
            ("label_map", layout.label_map),
            ("metrics", layout.metrics),
            ("log", layout.train_log),
        )
    ]

    out += ["", "Environment"]
    env_fields: list[tuple[str, Any]] = [
        ("device", run.get("device_used") or env.get("device")),
        ("precision", run.get("precision")),
        ("python", env.get("python")),
        ("peak_memory", f"{env['peak_memory_mb']:.0f} MB" if env.get("peak_memory_mb") else None),
        ("git_commit", env.get("git_commit")),
    ]
    for group in ("packages", "plugins"):
        if isinstance(env.get(group), dict) and env[group]:
            env_fields.append((group, ", ".join(f"{k} {_plain(v)}" for k, v in env[group].items())))
    if not env and run.get("env_version"):
        env_fields.append(("packages", run["env_version"]))
    out += [f"  {name:<13} {value}" for name, value in env_fields if value not in (None, "")]

    out += ["", f"Config ({_short_path(layout.config_copy)})"]
    out += ["  " + line for line in config_text.rstrip("\n").splitlines()] if config_text else ["  (missing)"]
    click.echo("\n".join(out))


def _best_line(run: dict[str, Any], metrics: dict[str, Any]) -> str | None:
    best = metrics.get("best")
    headline = run.get("headline_metric") or "avg_f1"
    if not isinstance(best, dict) or not isinstance(best.get(headline), (int, float)):
        return None
    return f"{headline} {best[headline]:.4f} at epoch {best.get('epoch')}"


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# ---- rollback -----------------------------------------------------------------------------------------


@click.command()
@click.option("--exp-id", default=None, metavar="EXP", help="Experiment to make active (default: undo).")
@click.option(
    "--configs-dir",
    type=click.Path(file_okay=False),
    default="configs",
    show_default=True,
    help="Where the experiment's config is restored as <exp_id>.toml.",
)
@_outputs_option
def rollback(exp_id: str | None, configs_dir: str, outputs: str | None) -> None:
    """Make a completed experiment the active one (undo: no --exp-id).

    The active experiment is what `lorakit predict` uses when no EXP is given. Its config_copy.toml is
    restored to CONFIGS_DIR/<exp_id>.toml when that file is missing or differs; the old file is kept
    as <exp_id>.toml.bak-<time>. Without --exp-id, go back to the previously active experiment.
    """
    from ..runs.index import ExperimentIndex
    from ..runs.rollback import rollback as do_rollback

    with _warnings_to_stderr():
        result = do_rollback(exp_id, outputs=outputs, configs_dir=configs_dir)
    if not result.changed:
        click.echo(f"{result.exp_id} is already the active experiment.")
    else:
        verb = "Back to" if result.undo else "Active experiment:"
        click.echo(f"{verb} {result.exp_id} (was {result.previous or 'none'}).")
    target = _short_path(result.config_path)
    source = _short_path(ExperimentIndex(outputs).folder(result.exp_id))
    if result.config_action == "created":
        click.echo(f"Wrote {target} from {source}/config_copy.toml.")
    elif result.config_action == "restored":
        backup = _short_path(result.backup_path) if result.backup_path else "?"
        click.echo(
            f"Restored {target} from {source}/config_copy.toml; the previous file is kept as {backup}."
        )
    elif result.config_action == "unchanged":
        click.echo(f"{target} already matches the experiment's config; left unchanged.")
    else:
        click.echo(f"{source}/config_copy.toml is missing; {target} left alone.", err=True)


# ---- index --------------------------------------------------------------------------------------------


@click.group()
def index() -> None:
    """Maintain the experiment index (outputs/experiment_index.json)."""


@index.command("rebuild")
@_outputs_option
def rebuild(outputs: str | None) -> None:
    """Regenerate the index from the experiment folders (keeps the active experiment and its history)."""
    from ..runs.index import ExperimentIndex

    idx = ExperimentIndex(outputs)
    with _warnings_to_stderr():
        entries = idx.rebuild()
        active = idx.active()
    click.echo(
        f"Rebuilt {_short_path(idx.path)}: {len(entries)} experiment{'s' if len(entries) != 1 else ''}"
        + (f" (active: {active})" if active else "")
        + "."
    )
