"""``lorakit rollback``: make a completed experiment the active one, and put its config back in ``configs/``.

The active experiment is what ``lorakit predict`` uses when no experiment is named. Every change is recorded
in the index (``active.history``: who, when, from which experiment); ``rollback`` without an experiment walks
that history back one step, like an undo.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from ..errors import LorakitError
from ..fsutil import write_bytes_atomic
from .index import ExperimentIndex, entry_from_folder
from .layout import RunLayout

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class RollbackError(LorakitError):
    """The experiment cannot be made active (unknown, not completed, nothing to undo)."""


@attrs.define(kw_only=True, frozen=True)
class RollbackResult:
    """What ``rollback`` did, for the CLI to print."""

    exp_id: str
    previous: str | None
    changed: bool  # False when exp_id already was the active experiment
    undo: bool
    config_path: Path
    config_action: str  # "created" | "restored" | "unchanged" | "skipped"
    backup_path: Path | None = None


def current_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER, as in some containers
        return "unknown"


def undo_target(state: dict[str, Any]) -> str:
    """The experiment that was active before the current one, replaying the history as a stack
    (a rollback pushes, an undo pops), so repeated undos keep walking back."""
    stack: list[str | None] = []
    for record in state.get("history") or []:
        if record.get("action") == "undo":
            if stack:
                stack.pop()
        else:
            if not stack:
                stack.append(record.get("previous"))
            stack.append(record.get("exp_id"))
    if stack and stack[-1] != state.get("exp_id"):  # history and pointer disagree: trust the pointer
        history = state.get("history") or []
        stack = [history[-1].get("previous"), state.get("exp_id")] if history else []
    if len(stack) < 2 or stack[-2] is None:
        raise RollbackError(
            "no earlier active experiment to return to; name one: lorakit rollback --exp-id EXP"
        )
    return str(stack[-2])


def _strip_header(text: bytes) -> bytes:
    """The file without the comment lines ``rollback`` writes at its top."""
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith(b"#"):
        lines.pop(0)
    return b"".join(lines)


def _same_config(current: Path, copy_bytes: bytes) -> bool:
    """Does ``configs/<exp_id>.toml`` still describe the experiment? Equal text, or a config (often a
    short child of a template) that merges and validates to exactly the recorded config (``copy_bytes``,
    its references already re-based to ``configs/``)."""
    current_bytes = current.read_bytes()
    if current_bytes == copy_bytes or _strip_header(current_bytes) == _strip_header(copy_bytes):
        return True
    try:
        from ..config.schema import load_config, to_dict

        cfg, _raw = load_config(current)
        recorded, _raw = load_config(tomllib.loads(copy_bytes.decode("utf-8")), cwd=current.parent)
    except (LorakitError, OSError, ValueError):
        return False
    mine, theirs = to_dict(cfg), to_dict(recorded)
    mine.pop("base_config", None)
    theirs.pop("base_config", None)
    return mine == theirs


def _copy_for(folder: Path, copy_bytes: bytes, configs_dir: Path) -> bytes:
    """config_copy.toml as a file in ``configs_dir`` says it: relative model and data paths re-based from the
    experiment folder (config.references); the text as it is when there are none."""
    from ..config.references import rebase
    from ..config.render import to_toml

    try:
        data = tomllib.loads(copy_bytes.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return copy_bytes
    if not rebase(data, folder, configs_dir):
        return copy_bytes
    comments = copy_bytes[: len(copy_bytes) - len(_strip_header(copy_bytes))]
    return comments + to_toml(data).encode("utf-8")


def restore_config(exp_id: str, folder: Path, configs_dir: Path, stamp: str) -> tuple[Path, str, Path | None]:
    """Write ``folder/config_copy.toml`` to ``configs_dir/<exp_id>.toml`` unless that file already
    matches; a differing file is kept as ``<exp_id>.toml.bak-<stamp>``."""
    target = configs_dir / f"{exp_id}.toml"
    copy = folder / "config_copy.toml"
    try:
        copy_bytes = _copy_for(folder, copy.read_bytes(), configs_dir)
    except OSError:
        return target, "skipped", None
    header = (
        f"# Restored by `lorakit rollback` from {copy} ({stamp}).\n# Run: lorakit train {target.as_posix()}\n"
    ).encode()
    if not target.exists():
        write_bytes_atomic(target, header + copy_bytes)
        return target, "created", None
    if _same_config(target, copy_bytes):
        return target, "unchanged", None
    backup = target.with_name(f"{target.name}.bak-{stamp}")
    n = 1
    while backup.exists():
        backup = target.with_name(f"{target.name}.bak-{stamp}-{n}")
        n += 1
    shutil.copy2(target, backup)  # copy, not move: a failed write below leaves the user's file in place
    write_bytes_atomic(target, header + copy_bytes)
    return target, "restored", backup


def rollback(
    exp_id: str | None = None,
    *,
    outputs: str | Path | None = None,
    configs_dir: str | Path = "configs",
    user: str | None = None,
) -> RollbackResult:
    """Make ``exp_id`` the active experiment (None: the one active before, an undo).

    Refuses unknown experiments and any whose folder does not say ``completed``; a damaged file of the
    folder (run.json, metrics.json, label_map.json, env_info.json, config_copy.toml) raises
    :class:`~lorakit.errors.DamagedFile` before anything is written.
    """
    index = ExperimentIndex(outputs)
    undo = exp_id is None
    state = index.active_state()
    target = undo_target(state) if exp_id is None else exp_id
    layout = RunLayout(index.folder(target))
    folder = layout.root
    layout.require_run()
    if not layout.run_info.is_file():
        raise RollbackError(index.unknown_message(target))
    entry = entry_from_folder(folder)  # the folder is the truth, the index may lag behind
    if entry.get("status") != "completed":
        raise RollbackError(
            f"cannot roll back to {target}: its status is {entry.get('status')!r}; "
            "only completed experiments can be made active"
        )
    layout.read_config_copy()  # a damaged copy must not become configs/<exp_id>.toml
    index.sync(target)
    record = index.set_active(target, user=user or current_user(), action="undo" if undo else "rollback")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    config_path, action, backup = restore_config(target, folder, Path(configs_dir), stamp)
    return RollbackResult(
        exp_id=target,
        previous=record["previous"] if record else state.get("exp_id"),
        changed=record is not None,
        undo=undo,
        config_path=config_path,
        config_action=action,
        backup_path=backup,
    )
