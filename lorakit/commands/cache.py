"""``lorakit cache``: list, clear and explain the tokenized data cache (and build it, for scripts)."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

CACHE_DIR_HELP = "Cache folder (default: data.cache_dir, else $LORAKIT_CACHE, else ./data/processed)."


@click.group()
def cache() -> None:
    """Inspect and manage the tokenized data cache."""


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover


def _short_path(value: str | None) -> str:
    """A hub id as is; a path by its last two parts, which name the model better than its prefix."""
    if not value:
        return "-"
    parts = Path(value).parts
    return value if len(parts) <= 2 else str(Path(*parts[-2:]))


def _root(cache_dir: str | None) -> Path:
    from ..data.cache import cache_root

    return Path(cache_dir) if cache_dir else cache_root()


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Cache warnings as one ``Warning: ...`` line on stderr instead of Python's two-line format."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                click.echo(f"Warning: {w.message}", err=True)


def _entry_row(entry: Any) -> dict[str, Any]:
    meta = entry.meta or {}
    return {
        "key": entry.key,
        "path": str(entry.path),
        "created": meta.get("created"),
        "rows": {name: info.get("rows") for name, info in meta.get("splits", {}).items()},
        "bytes": entry.size,
        "tokenizer": meta.get("tokenizer_source"),
        "sources": {k: v for k, v in meta.get("sources", {}).items() if v},
        "max_len": meta.get("inputs", {}).get("max_len"),
        "tasks": list(meta.get("label_map", {}).get("tasks", {})),
        "valid_meta": entry.meta is not None,
    }


@cache.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help=CACHE_DIR_HELP)
def ls(as_json: bool, cache_dir: str | None) -> None:
    """List cache entries, oldest first: key, created, rows per split, size, tokenizer, source files."""
    from tabulate import tabulate

    from ..data.cache import iter_entries

    root = _root(cache_dir)
    rows = [_entry_row(e) for e in iter_entries(root)]
    if as_json:
        click.echo(json.dumps({"root": str(root), "entries": rows}, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo(f"no cache entries in {root}")
        return
    table = [
        [
            Path(r["path"]).name,
            (r["created"] or "?").replace("T", " ").rstrip("Z"),
            " / ".join(f"{r['rows'].get(s, '-')}" for s in ("train", "val", "test")),
            r["max_len"],
            _human(r["bytes"]),
            _short_path(r["tokenizer"]),
            ", ".join(Path(p).name for p in r["sources"].values()) or "(meta.json unreadable)",
        ]
        for r in rows
    ]
    headers = ["key", "created (UTC)", "train / val / test", "max_len", "size", "tokenizer", "source files"]
    click.echo(tabulate(table, headers=headers, tablefmt="plain"))
    total = sum(r["bytes"] for r in rows)
    click.echo(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, {_human(total)} in {root}")


@cache.command("clear")
@click.option("--older-than", "older_than", type=float, metavar="DAYS", help="Only entries older than this.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help=CACHE_DIR_HELP)
def clear(older_than: float | None, yes: bool, cache_dir: str | None) -> None:
    """Remove cache entries (all, or those older than DAYS), and leftovers of crashed builds."""
    import datetime as dt

    from ..data.cache import discard, iter_entries, leftovers

    root = _root(cache_dir)
    entries = list(iter_entries(root))
    if older_than is not None:
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=older_than)
        entries = [e for e in entries if e.created < cutoff]
    stale = leftovers(root)
    if not entries and not stale:
        click.echo(f"nothing to remove in {root}")
        return
    size = sum(e.size for e in entries)
    if not yes:
        click.confirm(f"Remove {len(entries)} cache entries ({_human(size)}) from {root}?", abort=True)
    for entry in entries:
        discard(entry.path)
    for path in stale:
        discard(path)
    noun = "entry" if len(entries) == 1 else "entries"
    click.echo(f"removed {len(entries)} {noun} ({_human(size)}) from {root}")


def _load(config_path: str, overrides: tuple[str, ...]) -> Any:
    from ..config.schema import load_config

    cfg, _raw = load_config(config_path, overrides)
    return cfg


@cache.command("why")
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key (TOML value).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help=CACHE_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="The verdict and every hashed input as JSON.")
def why(config_path: str, overrides: tuple[str, ...], cache_dir: str | None, as_json: bool) -> None:
    """Say whether CONFIG would hit the cache; on a miss, what differs from the nearest entry."""
    from ..data.why import explain

    cfg = _load(config_path, overrides)
    result = explain(cfg, root=cache_dir)
    if as_json:
        payload = {
            "hit": result.hit,
            "key": result.key,
            "path": str(result.path),
            "damaged": result.damaged,
            "nearest": result.nearest.key if result.nearest else None,
            "differences": result.differences,
            "inputs": result.inputs,
        }
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    for line in result.lines():
        click.echo(line)


@cache.command("build", hidden=True)
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key (TOML value).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help=CACHE_DIR_HELP)
def build(config_path: str, overrides: tuple[str, ...], cache_dir: str | None) -> None:
    """Prepare CONFIG's data (read, validate, tokenize, cache) and print the key; a hit loads it."""
    from ..data import prepare_data
    from ..errors import ConfigError

    cfg = _load(config_path, overrides)

    def load_tokenizer() -> Any:
        import transformers

        try:
            return transformers.AutoTokenizer.from_pretrained(cfg.model.arch)
        except (OSError, ValueError) as exc:
            message = " ".join(str(exc).split())
            problem = f"model.arch: cannot load a tokenizer from {cfg.model.arch!r}: {message}"
            raise ConfigError([problem]) from None

    start = time.perf_counter()
    with _warnings_as_lines():
        data = prepare_data(cfg, tokenizer_loader=load_tokenizer, cache_root=cache_dir)
    seconds = time.perf_counter() - start
    sizes = ", ".join(f"{name} {len(split)}" for name, split in data.splits.items())
    verdict = "HIT" if data.hit else "MISS (built)"
    click.echo(f"{verdict} {data.cache_path.name}  {sizes} rows  {seconds:.2f} s  {data.cache_path}")
