"""Sweeps: one base config and a grid of values in, one child config per grid point out, each queued.

``lorakit sweep CONFIG --grid train.lr=1e-4,5e-4 --grid model.lora.rank=8,16`` (or a ``[sweep]`` table in
CONFIG) plans the full cartesian product of the grid (``--random N``: N points of it, chosen by ``--seed``),
validates every child with the real config loader, then writes the children and queues them. Everything is
checked before anything is written.

Names are deterministic, so the same sweep asked twice is the same sweep:

* the sweep id is ``<base exp_id>-sweep-<8 hex>``, the hex from a hash of the base exp_id, the grid (keys
  and values in order) and the random sample asked for;
* each point's exp_id is ``<base exp_id>-<key><value>-...`` (``demo-lr1e-4-rank8``), a key named by the
  last part of its dotted name (more parts where two keys would read the same), characters an exp_id may
  not hold replaced by ``_``;
* the children go to ``<CONFIG's folder>/sweeps/<sweep id>/<exp_id>.toml``; each names CONFIG as its
  ``base_config`` (relative to its folder) and records ``sweep = "<sweep id>"``, which
  ``lorakit compare --filter sweep=<sweep id>`` matches (from each experiment's config_copy.toml).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .errors import ConfigError, LorakitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from .config.loader import RawConfig
    from .config.schema import ExperimentConfig
    from .scheduling.queue import Job

SWEEPS_DIR = "sweeps"
GRID_FLAG = "--grid"
GRID_HINT = "expected KEY=V1,V2,..., e.g. train.lr=1e-4,5e-4"
# Keys each child sets itself: a grid cannot vary them.
FIXED_KEYS = ("exp_id", "base_config", "sweep")

Grid = dict[str, list[Any]]


class SweepError(LorakitError):
    """A sweep that cannot be planned as asked: a bad grid, too large a sample, a name already taken."""


@attrs.define(kw_only=True, frozen=True)
class SweepTable:
    """A config's ``[sweep]`` table: what ``lorakit sweep CONFIG`` expands when no ``--grid`` is given."""

    grid: dict[str, list[Any]] = attrs.field(factory=dict)
    random: int | None = None
    seed: int = 0


@attrs.define(kw_only=True, frozen=True)
class SweepPoint:
    """One point of a sweep: its experiment, its values (dotted key → value) and its child config."""

    exp_id: str
    values: dict[str, Any]
    path: Path
    text: str

    @property
    def label(self) -> str:
        """``train.lr=1e-4 model.lora.rank=8``."""
        return _label(self.values)


@attrs.define(kw_only=True, frozen=True)
class SweepPlan:
    """A planned sweep: every point validated, nothing written yet (:func:`write_sweep` writes it)."""

    config_path: Path
    base_exp_id: str
    sweep_id: str
    grid: Grid
    random: int | None
    seed: int
    size: int  # points in the full grid
    folder: Path
    outputs: Path
    priority: str
    headline: str  # the metric `compare --sort-by` ranks the points by
    points: tuple[SweepPoint, ...]


# ---- the grid -----------------------------------------------------------------------------------------


def parse_grid(texts: Sequence[str]) -> Grid:
    """``--grid KEY=V1,V2`` options as a grid. Values read as TOML (``1e-4``, ``true``, ``[0.6, 0.4]``,
    ``"a,b"``); bare words are strings (``bert-base-chinese``)."""
    from .config.loader import parse_override

    grid: Grid = {}
    for text in texts:
        key, sep, values = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part or part != part.strip() for part in key.split(".")):
            raise SweepError(f"{GRID_FLAG} {text!r}: {GRID_HINT}")
        if key in grid:
            raise SweepError(f"{GRID_FLAG} {key}: given twice; list all its values in one {GRID_FLAG}")
        values = values.strip()
        try:
            grid[key] = list(tomllib.loads(f"v = [{values}]")["v"])
        except tomllib.TOMLDecodeError:
            parts = [part.strip() for part in values.split(",")]
            if any(not part for part in parts):
                raise SweepError(f"{GRID_FLAG} {text!r}: an empty value; {GRID_HINT}") from None
            grid[key] = [parse_override(f"{key}={part}")[1] for part in parts]
    return grid


def grid_problems(grid: Mapping[str, Sequence[Any]]) -> list[tuple[str, str]]:
    """What is wrong with a grid, as ``(key, problem)`` pairs: a key a sweep sets itself, keys that
    overlap, a value list that is empty or names a value twice."""
    problems = []
    for key, values in grid.items():
        head = key.partition(".")[0]
        if head in FIXED_KEYS:
            problems.append((key, f"a sweep sets {head} itself; it cannot be swept"))
        elif not isinstance(values, (list, tuple)):
            problems.append((key, f"expected a list of values, got {values!r}"))
        elif not values:
            problems.append((key, "empty value list; give at least one value"))
        else:
            seen = [_canonical(v) for v in values]
            twice = next((v for i, v in enumerate(values) if seen.index(seen[i]) != i), None)
            if twice is not None:
                problems.append((key, f"value {value_text(twice)} given twice"))
        clash = next((other for other in grid if other.startswith(key + ".")), None)
        if clash is not None:
            problems.append((key, f"overlaps {clash}; sweep one of them"))
    return problems


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def value_text(value: Any) -> str:
    """A value as a name shows it: ``1e-4`` (not ``0.0001``), ``true``, ``[0.6,0.4]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        plain = repr(value)
        if "inf" in plain or "nan" in plain:
            return plain
        mantissa, _, exponent = f"{Decimal(plain).normalize():e}".partition("e")
        short = f"{mantissa}e{int(exponent)}"
        return short if len(short) < len(plain) else plain
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its last part, or as many last parts as keep it apart from the others."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            others = [o for o in keys if o != key and (o == name or o.endswith("." + name))]
            if not others:
                break
        names[key] = name
    return names


def point_exp_id(base: str, values: Mapping[str, Any], short: Mapping[str, str]) -> str:
    """``<base>-<key><value>-...``, characters an exp_id may not hold replaced by ``_``."""
    parts = []
    for key, value in values.items():
        text = re.sub(r"[^\w.+=@-]+", "_", f"{short[key]}{value_text(value)}").strip("_")
        parts.append(text or "_")
    return "-".join([base, *parts])


def sweep_id(base: str, grid: Grid, random: int | None, seed: int) -> str:
    """``<base>-sweep-<8 hex>``, the hex a hash of what decides the sweep's points."""
    facts = {"base": base, "grid": list(grid.items()), "random": random, "seed": seed if random else None}
    digest = hashlib.sha256(_canonical(facts).encode("utf-8")).hexdigest()
    return f"{base}-sweep-{digest[:8]}"


def grid_size(grid: Grid) -> int:
    size = 1
    for values in grid.values():
        size *= len(values)
    return size


def chosen_points(grid: Grid, random: int | None, seed: int) -> list[dict[str, Any]]:
    """The grid's points in grid order (the last key varies fastest); with ``random``, that many of them,
    the same ones for the same ``seed``."""
    import random as random_module

    size = grid_size(grid)
    if random is None:
        indices: Sequence[int] = range(size)
    else:
        indices = sorted(random_module.Random(seed).sample(range(size), random))
    points = []
    for index in indices:
        point: dict[str, Any] = {}
        for key in reversed(grid):  # mixed radix: the index's digits, last key first
            index, digit = divmod(index, len(grid[key]))
            point[key] = grid[key][digit]
        points.append({key: point[key] for key in grid})
    return points


# ---- planning -----------------------------------------------------------------------------------------


def plan_sweep(
    config_path: str | Path,
    grid: Mapping[str, Sequence[Any]] | None = None,
    *,
    random: int | None = None,
    seed: int | None = None,
    outputs: str | Path | None = None,
) -> SweepPlan:
    """Plan the sweep of ``config_path`` over ``grid`` (default: the config's ``[sweep]`` table), checking
    every point's config with the real loader and every name against ``outputs`` and its queue.

    ``random`` picks that many points of the full grid (``seed`` decides which; default 0). Relative paths
    among the values are relative to the working directory (in a ``[sweep]`` table: to the config file).
    Raises :class:`SweepError` or :class:`~lorakit.errors.ConfigError` naming every problem; writes nothing.
    """
    from .config.schema import load_config
    from .conventions import headline_metric
    from .runs.layout import outputs_root

    path = Path(config_path).expanduser().resolve()
    cfg, raw = load_config(path)
    source = _grid_source(path, raw, grid, random, seed)
    problems = grid_problems(source.grid)
    if problems:
        raise SweepError("; ".join(source.problem(key, text) for key, text in problems))
    full = {key: list(values) for key, values in source.grid.items()}
    size = grid_size(full)
    if source.random is not None and not 1 <= source.random <= size:
        n, pick = source.random, f"pick 1 to {size}, or leave it out to take them all"
        if random is not None:
            raise SweepError(f"--random {n}: the grid has {size} point(s); {pick}")
        raise SweepError(f"sweep.random: {n}, but the grid has {size} point(s); {pick} ({path})")
    sid = sweep_id(cfg.exp_id, full, source.random, source.seed)
    folder = path.parent / SWEEPS_DIR / sid
    chosen = chosen_points(full, source.random, source.seed)
    planned = _plan_points(path, cfg.exp_id, full, chosen, sid, folder, source)
    root = outputs_root(outputs)
    _check_names(planned, root)
    return SweepPlan(
        config_path=path,
        base_exp_id=cfg.exp_id,
        sweep_id=sid,
        grid=full,
        random=source.random,
        seed=source.seed,
        size=size,
        folder=folder,
        outputs=root,
        priority=cfg.resources.priority,
        headline=headline_metric(cfg.train.save_strategy),
        points=tuple(point for point, _ in planned),
    )


@attrs.define(kw_only=True, frozen=True)
class _GridSource:
    """Where a sweep's grid came from: ``--grid`` (the API's ``grid``) or the config's ``[sweep]`` table."""

    grid: Mapping[str, Sequence[Any]]
    random: int | None
    seed: int
    table: Path | None  # the config file whose [sweep] table it is; None: --grid

    @property
    def label(self) -> str:
        """How the child configs' provenance names the grid's values."""
        return GRID_FLAG if self.table is None else f"sweep.grid of {self.table}"

    @property
    def relative_to(self) -> Path:
        """What a relative path among the values is relative to."""
        return Path.cwd() if self.table is None else self.table.parent

    def problem(self, key: str, text: str) -> str:
        if self.table is None:
            return f"{GRID_FLAG} {key}: {text}"
        return f"sweep.grid.{key}: {text} ({self.table})"


def _grid_source(
    path: Path,
    raw: RawConfig,
    grid: Mapping[str, Sequence[Any]] | None,
    random: int | None,
    seed: int | None,
) -> _GridSource:
    """The grid, sample size and seed: the arguments', else the config's ``[sweep]`` table's (the
    arguments' ``random`` and ``seed`` still win)."""
    if grid:
        return _GridSource(grid=grid, random=random, seed=seed or 0, table=None)
    from .config.converter import structure_table

    data = raw.data.get("sweep")
    if not isinstance(data, Mapping):
        raise SweepError(
            f"{path}: no grid to sweep; give {GRID_FLAG} KEY=V1,V2 or a [sweep] table, e.g. "
            '[sweep] grid = {"train.lr" = [1e-4, 5e-4]}'
        )
    table, problems = structure_table(data, SweepTable, "sweep")
    if problems:
        raise ConfigError(f"{key}: {problem} ({path})" for key, problem in problems)
    if not table.grid:
        raise SweepError(f"sweep.grid: empty; give at least one key and its values ({path})")
    return _GridSource(
        grid=table.grid,
        random=table.random if random is None else random,
        seed=table.seed if seed is None else seed,
        table=path,
    )


def _plan_points(
    path: Path,
    base: str,
    grid: Grid,
    chosen: list[dict[str, Any]],
    sid: str,
    folder: Path,
    source: _GridSource,
) -> list[tuple[SweepPoint, ExperimentConfig]]:
    """Each point and its validated config; every problem of every point raised at once."""
    from .runs.layout import exp_id_problem

    short = _short_keys(list(grid))
    base_ref = Path(os.path.relpath(path, folder)).as_posix()
    planned: list[tuple[SweepPoint, ExperimentConfig]] = []
    problems: dict[str, None] = {}  # a bad grid key fails every point alike: said once
    taken: dict[str, SweepPoint] = {}
    for n, values in enumerate(chosen, start=1):
        exp_id = point_exp_id(base, values, short)
        child = {"base_config": base_ref, "exp_id": exp_id, "sweep": sid}
        written = _rebased(values, source.relative_to, folder)
        point = SweepPoint(
            exp_id=exp_id,
            values=values,
            path=folder / f"{exp_id}.toml",
            text=_child_text(child, written, f"{sid}, point {n} of {len(chosen)}: {_label(values)}"),
        )
        problem = exp_id_problem(exp_id)
        if problem is not None:
            problems[f"sweep point {point.label}: exp_id {problem}; shorten the base exp_id"] = None
            continue
        if exp_id in taken:
            problems[f"sweep points {taken[exp_id].label} and {point.label} both name {exp_id!r}"] = None
            continue
        taken[exp_id] = point
        try:
            planned.append((point, _child_config(child, written, folder, source.label)))
        except ConfigError as exc:
            problems.update(dict.fromkeys(exc.lines()))
    if problems:
        raise ConfigError(problems)
    return planned


def _label(values: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={value_text(value)}" for key, value in values.items())


def _rebased(values: Mapping[str, Any], relative_to: Path, folder: Path) -> dict[str, Any]:
    """The point's values as its child config (in ``folder``) writes them: a relative path among them,
    meant relative to ``relative_to``, made relative to ``folder``, so that it names the same file."""
    from .config.loader import MAYBE_PATH_KEYS, PATH_KEYS

    written = dict(values)
    for key, value in values.items():
        if not isinstance(value, str) or value.startswith(("pkg://", "~")) or Path(value).is_absolute():
            continue
        maybe = key in MAYBE_PATH_KEYS  # a hub id or a path: a path when it looks like one
        if key in PATH_KEYS or (
            maybe and (value.startswith(("./", "../")) or (relative_to / value).exists())
        ):
            written[key] = Path(os.path.relpath(relative_to / value, folder)).as_posix()
    return written


def _nest(child: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The child's own keys and the point's dotted keys as nested tables."""
    data: dict[str, Any] = dict(child)
    for dotted, value in values.items():
        node = data
        *heads, last = dotted.split(".")
        for head in heads:
            node = node.setdefault(head, {})
        node[last] = value
    return data


def _child_text(child: Mapping[str, Any], values: Mapping[str, Any], title: str) -> str:
    import tomli_w

    header = f"# lorakit sweep {title}\n# generated: change the base config or the grid instead\n"
    return header + tomli_w.dumps(_nest(child, values), multiline_strings=False)


def _child_config(
    child: Mapping[str, Any], values: Mapping[str, Any], folder: Path, label: str
) -> ExperimentConfig:
    """The child config as the loader validates it (from ``folder``, where it will be written); problems
    with the grid's keys say they come from ``label``."""
    from .config.loader import load_raw
    from .config.schema import structure

    raw = load_raw(_nest(child, values), cwd=folder)
    for key, source in raw.provenance.items():
        if source == "<dict>":  # what the child itself sets: the point's values and its three own keys
            from_grid = any(key == k or key.startswith(k + ".") for k in values)
            raw.provenance[key] = label if from_grid else "the sweep's child config"
    return structure(raw)


def _check_names(planned: Sequence[tuple[SweepPoint, ExperimentConfig]], outputs: Path) -> None:
    """Refuse exp_ids taken by an experiment folder of ``outputs`` or a job waiting in its queue."""
    from .scheduling.queue import ACTIVE_STATES, JobQueue
    from .scheduling.submit import check_start

    waiting = {job.exp_id: job for job in JobQueue(outputs).jobs(ACTIVE_STATES)}
    taken = []
    for point, cfg in planned:
        if point.exp_id in waiting:
            job = waiting[point.exp_id]
            taken.append(f"{point.exp_id} (job {job.id}, {job.state})")
            continue
        try:
            check_start(cfg, outputs, resume=False, force=False)
        except LorakitError:
            taken.append(f"{point.exp_id} ({outputs / point.exp_id} exists)")
    if taken:
        raise SweepError(
            f"{len(taken)} of the sweep's exp_ids are taken already: {', '.join(taken)}; "
            "cancel or remove them first, or change the grid or the base exp_id"
        )


# ---- writing and queueing -----------------------------------------------------------------------------


def write_sweep(plan: SweepPlan) -> list[Path]:
    """Write each point's child config (atomically); their paths, in point order."""
    from .fsutil import write_text_atomic

    for point in plan.points:
        write_text_atomic(point.path, point.text)
    return [point.path for point in plan.points]


def queue_sweep(plan: SweepPlan) -> list[Job]:
    """Queue each written child config in ``plan.outputs``'s queue (as ``lorakit submit`` does), with its
    config's priority, as one batch named by the sweep id; the jobs, in point order."""
    from .scheduling.queue import JobQueue
    from .scheduling.submit import submit_config

    queue = JobQueue(plan.outputs)
    return [submit_config(queue, point.path, batch=plan.sweep_id) for point in plan.points]
