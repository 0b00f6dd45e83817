"""Adding experiments to the queue: validate the config now, so a job that cannot start is refused here."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from ..config.schema import ExperimentConfig, load_config
from ..errors import ConfigError, LorakitError
from .launch import read_run
from .queue import Job, JobQueue


def check_start(cfg: ExperimentConfig, outputs: Path, *, resume: bool, force: bool) -> str:
    """The job's start mode (``new``, ``resume``, ``force``), refusing what ``lorakit train`` would refuse."""
    if force:
        return "force"
    if resume:
        return "resume"
    folder = outputs / cfg.exp_id
    run = read_run(outputs, cfg.exp_id, strict=True)
    if run is None:
        if folder.is_dir() and any(folder.iterdir()):
            raise LorakitError(f"{folder} exists and is not a lorakit experiment; submit with --force")
        return "new"
    if run.status == "completed":
        raise LorakitError(f"{folder} holds a completed experiment; submit with --force to train it again")
    raise LorakitError(
        f"{folder} holds an unfinished run ({run.status}); submit with --resume to continue it "
        "or --force to start over"
    )


def submit_config(
    queue: JobQueue,
    config_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    priority: str | None = None,
    resume: bool = False,
    force: bool = False,
    batch: str | None = None,
) -> Job:
    """Validate ``config_path`` (with ``overrides``) and queue it; priority defaults to resources.priority."""
    if resume and force:
        raise LorakitError("--resume and --force exclude each other")
    cfg, _ = load_config(config_path, list(overrides))
    mode = check_start(cfg, queue.root, resume=resume, force=force)
    return queue.submit(
        exp_id=cfg.exp_id,
        config_path=str(Path(config_path).resolve()),
        overrides=list(overrides),
        priority=priority or cfg.resources.priority,
        start_mode=mode,
        gpus=cfg.resources.gpus,
        epochs=cfg.train.epochs,
        memory_mb=cfg.resources.memory_mb,
        batch=batch,
    )


def expand_configs(patterns: str) -> list[Path]:
    """``'configs/a*.toml,configs/b*.toml'`` → the matching files, in order, each once."""
    found: list[Path] = []
    for pattern in (p.strip() for p in patterns.split(",")):
        if not pattern:
            continue
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise LorakitError(f"--configs: nothing matches {pattern!r}")
        for match in matches:
            path = Path(match).resolve()
            if path not in found:
                found.append(path)
    if not found:
        raise LorakitError("--configs: no pattern given")
    return found


def validate_all(
    paths: Sequence[Path],
    overrides: Sequence[str],
    outputs: Path,
    *,
    force: bool,
    in_queue: frozenset[str] = frozenset(),
) -> dict[str, Path]:
    """Every config loads, no two share an exp_id, none collides with a folder (unless its experiment is
    in the queue already, ``in_queue``): all problems at once. Returns exp_id → config path."""
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            cfg, _ = load_config(path, list(overrides))
        except ConfigError as exc:
            problems.extend(f"{path.name}: {line}" for line in exc.lines())
            continue
        if cfg.exp_id in seen:
            problems.append(
                f"{path.name}: exp_id {cfg.exp_id!r} is also the exp_id of {seen[cfg.exp_id].name}"
            )
            continue
        seen[cfg.exp_id] = path
        if cfg.exp_id in in_queue:
            continue
        try:
            check_start(cfg, outputs, resume=False, force=force)
        except LorakitError as exc:
            problems.append(f"{path.name}: {exc}")
    if problems:
        raise ConfigError(problems)
    return seen
