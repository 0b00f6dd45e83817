"""The rows ``lorakit ls`` and ``lorakit show`` print, built from index entries and an experiment's files.

The commands only parse their options and render these rows; nothing here prints or imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..config.references import model_name
from ..conventions import DEFAULT_HEADLINE, headline_or_default
from .query import MISSING, ConfigCopies, metric_order, resolve
from .record import RunInfo


def common_headline(entries: Mapping[str, Mapping[str, Any]], ids: Sequence[str]) -> str:
    """The headline metric most of these experiments are judged by (the default when there are none)."""
    headlines = [headline_or_default(entries[i].get("headline")) for i in ids]
    return max(set(headlines), key=headlines.count) if headlines else DEFAULT_HEADLINE


def ls_row(exp_id: str, entry: Mapping[str, Any], *, active: str | None) -> dict[str, Any]:
    """One experiment as ``lorakit ls --json`` gives it."""
    params = entry.get("key_params") or {}
    headline = headline_or_default(entry.get("headline"))
    return {
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


#: the columns of ``lorakit ls --json/--csv``, in order (a sort key that is not the common headline adds one)
LS_COLUMNS = tuple(ls_row("", {}, active=None))


def ls_rows(
    entries: Mapping[str, Mapping[str, Any]],
    ids: Sequence[str],
    *,
    active: str | None,
    extra: str | None,
    configs: ConfigCopies,
) -> list[dict[str, Any]]:
    """``lorakit ls``'s rows, with the ``extra`` key's value (the sort key) when it is not a column."""
    rows = []
    for exp_id in ids:
        row = ls_row(exp_id, entries[exp_id], active=active)
        if extra:
            value = resolve(exp_id, entries[exp_id], extra, configs)
            row[extra] = None if value is MISSING else value
        rows.append(row)
    return rows


def ls_table_row(row: Mapping[str, Any], *, common: str, best: str, extra: str | None) -> dict[str, Any]:
    """One ``ls`` row as the table shows it: the common headline as a column, the model's last part,
    the creation time to the minute. ``best`` is the best value, already formatted."""
    if best and row["headline"] != common:
        best += f" ({row['headline']})"
    line = {
        "exp_id": row["exp_id"] + (" *" if row["active"] else ""),
        "task_type": row["task_type"],
        "model": model_name(row["model"]),
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
    return line


# ---- show -------------------------------------------------------------------------------------------------


def best_line(run: RunInfo, metrics: Mapping[str, Any]) -> str | None:
    """``avg_f1 0.9123 at epoch 3``, or None before a best epoch."""
    best = metrics.get("best")
    headline = run.headline
    if not isinstance(best, dict) or not isinstance(best.get(headline), (int, float)):
        return None
    return f"{headline} {best[headline]:.4f} at epoch {best.get('epoch')}"


def summary_fields(run: RunInfo, metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The head of ``lorakit show``: status, times, task type, best, where it came from, labels, notes."""
    fields: list[tuple[str, Any]] = [
        ("status", run.status),
        ("created", run.create_time),
        ("ended", run.end_time),
        ("task_type", run.task_type),
        ("best", best_line(run, metrics)),
        ("tuning", tuning_line(run)),
        ("throughput", throughput_line(run)),
        ("reproduces", run.reproduces),
        ("base_config", run.base_config),
        ("config_path", run.config_path),
        ("error", run.error),
    ]
    for task, labels in (run.tasks or {}).items():
        fields.append((f"task {task}", ", ".join(map(str, labels))))
    fields += [(f"note {i + 1}", note) for i, note in enumerate(run.notes or [])]
    return fields


def tuning_line(run: RunInfo) -> str | None:
    """``lora (rank 8, alpha 16, ...) 36,864 params + bottleneck (placement pfeiffer, ...) 18,816 params``."""
    parts = []
    for part in run.tuning or []:
        if not isinstance(part, Mapping):
            continue
        given = part.get("options")
        options: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        shown = ", ".join(f"{k} {v}" for k, v in options.items() if v is not None)
        count = part.get("trainable_params")
        params = f" {count:,} params" if isinstance(count, int) else ""
        parts.append(f"{part.get('method')}{f' ({shown})' if shown else ''}{params}")
    return " + ".join(parts) or None


def throughput_line(run: RunInfo) -> str | None:
    """``12,345 tokens/s over 1,234,567 tokens; MFU 23.4% of 150 GFLOP/s (fp32 matmul peak)``."""
    t = run.throughput
    if not isinstance(t, dict) or not t.get("tokens_per_s"):
        return None
    line = f"{t['tokens_per_s']:,.0f} tokens/s over {t.get('tokens_processed', 0):,} tokens"
    if isinstance(t.get("mfu"), (int, float)) and t.get("matmul_peak_flops"):
        peak = t["matmul_peak_flops"] / 1e9
        line += f"; MFU {t['mfu']:.1%} of {peak:,.0f} GFLOP/s ({run.precision or 'fp32'} matmul peak)"
    return line


def epochs_in_order(metrics: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """metrics.json's ``epoch_<n>`` blocks, by epoch number."""
    epochs = [
        (key, value) for key, value in metrics.items() if key.startswith("epoch_") and isinstance(value, dict)
    ]
    return sorted(epochs, key=lambda item: int(item[0][6:]) if item[0][6:].isdigit() else 0)


def epoch_rows(run: RunInfo, metrics: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The per-epoch table of ``lorakit show``: metric names (headline first) and one row an epoch,
    the best epoch marked ``*``."""
    epochs = epochs_in_order(metrics)
    best = best_block(metrics)
    names = metric_order((n for _, v in epochs for n in v), [run.headline], run.tasks or {})
    rows = []
    for key, values in epochs:
        number = key[6:]
        mark = " *" if str(best.get("epoch")) == number else ""
        rows.append({"epoch": number + mark, **{n: values.get(n) for n in names}})
    return names, rows


def best_block(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json's ``best`` block; ``{}`` before there is one."""
    best = metrics.get("best")
    return best if isinstance(best, dict) else {}


def headline_series(run: RunInfo, metrics: Mapping[str, Any]) -> list[float]:
    """The headline metric of each epoch, in order (epochs without it left out)."""
    headline = run.headline
    return [v[headline] for _, v in epochs_in_order(metrics) if isinstance(v.get(headline), (int, float))]


def env_fields(run: RunInfo, env: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The Environment block of ``lorakit show``."""
    fields: list[tuple[str, Any]] = [
        ("device", run.device_used or env.get("device")),
        ("precision", run.precision),
        ("python", env.get("python")),
        ("peak_memory", f"{env['peak_memory_mb']:.0f} MB" if env.get("peak_memory_mb") else None),
        ("git_commit", env.get("git_commit")),
    ]
    for group in ("packages", "plugins"):
        if isinstance(env.get(group), dict) and env[group]:
            fields.append((group, ", ".join(f"{k} {_plain(v)}" for k, v in env[group].items())))
    if not env and run.env_version:
        fields.append(("packages", run.env_version))
    return fields


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
