"""The experiment index: ``outputs/experiment_index.json``, a cache of every experiment folder.

The folders are the truth. An entry is rebuilt from ``run.json``, ``metrics.json``, ``label_map.json`` and
``env_info.json`` whenever the trainer calls :meth:`ExperimentIndex.sync`; a missing or corrupt index is
rebuilt from the folders with a warning. Writers take a lock on a sibling ``.lock`` file and replace the
index by write-to-temp-and-rename, so no update is lost and a reader never sees half a file (readers take
no lock). The active experiment (``lorakit rollback``) is the one thing the folders cannot tell; it lives in
the index and, so that it survives losing the index, in ``outputs/.lorakit_active.json`` too.

File shape::

    {"experiments": {exp_id: entry, ...},
     "active": {"exp_id": str | null, "history": [{"exp_id", "previous", "time", "user", "action"}, ...]}}
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import LorakitError, LorakitWarning, did_you_mean
from ..fsutil import dumps_json, write_bytes_atomic
from .layout import INDEX_FILE, RunLayout, outputs_root

ACTIVE_FILE = ".lorakit_active.json"
LOCK_TIMEOUT_S = 120.0
TASK_TYPES = ("single_cls", "double_cls", "multi_cls")


class IndexWarning(LorakitWarning):
    """The index was missing or corrupt and has been rebuilt, or a folder could not be read."""


class ExperimentNotFound(LorakitError):
    """No experiment of that id in the outputs folder."""


class ExperimentFolderError(LorakitError):
    """An experiment folder lacks ``run.json`` or has an unreadable one."""


class _Corrupt(Exception):
    """The index file exists but is not a valid index (unparsable, truncated, wrong shape)."""


def _empty_active() -> dict[str, Any]:
    return {"exp_id": None, "history": []}


def _valid_active(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and (value.get("exp_id") is None or isinstance(value.get("exp_id"), str))
        and isinstance(value.get("history", []), list)
    )


def _read_json_or_none(path: Path) -> Any:
    """A JSON file's content; None when missing or unreadable (optional files of a folder)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _best_from_epochs(metrics: dict[str, Any], headline: str) -> dict[str, Any]:
    """The best epoch when metrics.json has no ``best`` block yet (highest headline metric)."""
    best: dict[str, Any] = {}
    best_value = None
    for key, values in metrics.items():
        if not (key.startswith("epoch_") and isinstance(values, dict)):
            continue
        value = values.get(headline)
        if isinstance(value, (int, float)) and (best_value is None or value > best_value):
            best_value = value
            best = {"epoch": int(key.removeprefix("epoch_")) if key[6:].isdigit() else key[6:], **values}
    return best


def _env_version(env: dict[str, Any]) -> str | None:
    packages = env.get("packages") if isinstance(env, dict) else None
    if not isinstance(packages, dict):
        return None
    wanted = [name for name in ("torch", "transformers", "peft") if name in packages]
    return ", ".join(f"{name}=={packages[name]}" for name in wanted) or None


def entry_from_folder(folder: str | Path) -> dict[str, Any]:
    """Build one index entry from an experiment folder's files (the seed's entry shape plus status,
    label sets and the headline metric's name).

    Raises :class:`ExperimentFolderError` when ``run.json`` is missing or unreadable; the other files are
    optional (a run that has just started has no metrics yet).
    """
    layout = RunLayout(Path(folder))
    try:
        run = json.loads(layout.run_info.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentFolderError(f"{layout.run_info}: missing; not an experiment folder") from None
    except (OSError, ValueError) as exc:
        raise ExperimentFolderError(f"{layout.run_info}: cannot read: {exc}") from None
    if not isinstance(run, dict):
        raise ExperimentFolderError(f"{layout.run_info}: expected a JSON object")
    metrics = _read_json_or_none(layout.metrics)
    metrics = metrics if isinstance(metrics, dict) else {}
    label_map = _read_json_or_none(layout.label_map)
    label_map = label_map if isinstance(label_map, dict) else {}
    env = _read_json_or_none(layout.env_info)
    env = env if isinstance(env, dict) else {}

    tasks = run.get("tasks")
    if not isinstance(tasks, dict):
        tasks = {
            task: list(spec.get("labels", [])) if isinstance(spec, dict) else list(spec)
            for task, spec in (label_map.get("tasks") or {}).items()
        }
    headline = run.get("headline_metric") or "avg_f1"
    best = metrics.get("best")
    if not isinstance(best, dict):
        best = _best_from_epochs(metrics, headline)
    task_type = run.get("task_type") or label_map.get("task_type")
    if not task_type and tasks:
        task_type = TASK_TYPES[min(len(tasks), 3) - 1]
    return {
        "create_time": run.get("create_time"),
        "task_type": task_type,
        "base_config": run.get("base_config"),
        "key_params": dict(run.get("key_params") or {}),
        "best_metrics": {key: value for key, value in best.items() if key != "epoch"},
        "best_epoch": best.get("epoch"),
        "output_path": str(layout.root.resolve()),
        "device_used": run.get("device_used") or env.get("device"),
        "env_version": run.get("env_version") or _env_version(env),
        "status": run.get("status"),
        "end_time": run.get("end_time"),
        "tasks": tasks,
        "headline": headline,
        "epochs_done": sum(1 for key in metrics if key.startswith("epoch_")),
        # measured peaks: the scheduler's memory estimates calibrate from these
        "peak_memory_mb": run.get("peak_memory_mb", env.get("peak_memory_mb")),
        "peak_reserved_mb": run.get("peak_reserved_mb", env.get("peak_reserved_mb")),
        "world_size": run.get("world_size", 1),
        # the precision the run used (fp32 | bf16 | fp16): runs in different precisions are not compared blind
        "precision": run.get("precision"),
        "notes": list(run.get("notes") or []),
        "error": run.get("error"),
    }


def _dumps_index(data: dict[str, Any]) -> str:
    """The index as JSON with one experiment per line: readable and greppable, and several times faster
    to write than ``indent=2`` (which forces json's pure-Python encoder) with hundreds of entries."""

    one = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    lines = [f"  {one(exp_id)}: {one(entry)}" for exp_id, entry in data["experiments"].items()]
    experiments = "{\n" + ",\n".join(lines) + "\n }" if lines else "{}"
    return f'{{"experiments": {experiments},\n "active": {one(data["active"])}}}\n'


class ExperimentIndex:
    """``outputs/experiment_index.json``: read it, keep it in step with the folders, hold the active pointer.

    ``outputs`` follows :func:`lorakit.runs.layout.outputs_root` (``--outputs`` > ``$LORAKIT_OUTPUTS`` >
    ``./outputs``).
    """

    def __init__(self, outputs: str | Path | None = None):
        self.root: Path = outputs_root(outputs)
        self.path: Path = self.root / INDEX_FILE
        self.lock_path: Path = self.root / (INDEX_FILE + ".lock")
        self.active_path: Path = self.root / ACTIVE_FILE

    # ---- reading ------------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any] | None:
        """The index as stored; None when there is none. Raises _Corrupt when it is not a valid index."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise _Corrupt(str(exc)) from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise _Corrupt(f"invalid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("experiments"), dict):
            raise _Corrupt('no "experiments" object')
        if not all(isinstance(entry, dict) for entry in data["experiments"].values()):
            raise _Corrupt("an entry is not an object")
        if not _valid_active(data.get("active", _empty_active())):
            raise _Corrupt('invalid "active" object')
        data.setdefault("active", _empty_active())
        data["active"].setdefault("history", [])
        return data

    def load(self) -> dict[str, Any]:
        """The whole index (``experiments``, ``active``); rebuilt from the folders if missing or corrupt."""
        try:
            data = self._read()
            if data is not None:
                return data
        except _Corrupt:
            pass
        if not self.root.is_dir():
            return {"experiments": {}, "active": _empty_active()}
        try:
            with self._lock():
                return self._load_locked()
        except OSError as exc:  # a teammate's outputs: readable, not writable
            data = self._rebuild_locked(None, write=False)
            warnings.warn(
                f"experiment index {self.path} is missing or corrupt and cannot be rewritten ({exc}); "
                f"read {len(data['experiments'])} experiment folder(s) instead",
                IndexWarning,
                stacklevel=2,
            )
            return data

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every experiment's entry by exp_id (a missing or corrupt index is rebuilt, with a warning)."""
        return self.load()["experiments"]

    def active(self) -> str | None:
        """The active experiment set by ``lorakit rollback``; None when none was ever set."""
        return self.load()["active"].get("exp_id")

    def active_state(self) -> dict[str, Any]:
        """The ``active`` block: ``{"exp_id", "history"}``."""
        return self.load()["active"]

    def folder(self, exp_id: str) -> Path:
        """``outputs/<exp_id>/``; an exp_id that is a path (``../other/exp``) is refused, never followed."""
        return RunLayout.for_exp(exp_id, self.root).root

    def get(self, exp_id: str, entries: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """One entry; an experiment with a folder but no entry yet is read from its folder.

        Raises :class:`ExperimentNotFound` with a did-you-mean hint.
        """
        entries = self.entries() if entries is None else entries
        if exp_id in entries:
            return entries[exp_id]
        if (self.folder(exp_id) / "run.json").is_file():
            return entry_from_folder(self.folder(exp_id))
        raise ExperimentNotFound(self.unknown_message(exp_id, entries))

    def unknown_message(self, exp_id: str, entries: dict[str, dict[str, Any]] | None = None) -> str:
        names = set(self.entries() if entries is None else entries)
        if self.root.is_dir():
            names.update(p.parent.name for p in self.root.glob("*/run.json"))
        return f"no experiment {exp_id!r} in {self.root}{did_you_mean(exp_id, sorted(names))}"

    # ---- writing ------------------------------------------------------------------------------------

    def _lock(self) -> Any:
        import filelock

        self.root.mkdir(parents=True, exist_ok=True)
        # Group-writable: a team sharing an outputs folder shares its lock file.
        lock = filelock.FileLock(str(self.lock_path), timeout=LOCK_TIMEOUT_S, mode=0o664)
        return _TimeoutReporting(lock, self.lock_path)

    def _load_locked(self, *, quiet_missing: bool = False) -> dict[str, Any]:
        """Inside the lock: the current index, rebuilt (with a warning) if corrupt or missing.

        Writers pass ``quiet_missing``: the first run in a fresh outputs folder creates the index.
        """
        try:
            data = self._read()
            if data is not None:
                return data
            reason = "missing"
        except _Corrupt as exc:
            reason = f"corrupt: {exc}"
        data = self._rebuild_locked(None, write=bool(reason != "missing" or self._has_folders()))
        if reason != "missing" or (data["experiments"] and not quiet_missing):
            warnings.warn(
                f"experiment index {self.path} was {reason}; rebuilt from "
                f"{len(data['experiments'])} experiment folder(s)",
                IndexWarning,
                stacklevel=4,
            )
        return data

    def _write_locked(self, data: dict[str, Any]) -> None:
        write_bytes_atomic(self.path, _dumps_index(data).encode("utf-8"))

    def _scan(self) -> dict[str, dict[str, Any]]:
        experiments: dict[str, dict[str, Any]] = {}
        if not self.root.is_dir():
            return experiments
        for run_json in sorted(self.root.glob("*/run.json")):
            try:
                experiments[run_json.parent.name] = entry_from_folder(run_json.parent)
            except ExperimentFolderError as exc:
                warnings.warn(f"skipped {run_json.parent}: {exc}", IndexWarning, stacklevel=3)
        return experiments

    def _has_folders(self) -> bool:
        return any(self.root.glob("*/run.json")) or self.active_path.exists()

    def _rebuild_locked(self, old: dict[str, Any] | None, *, write: bool = True) -> dict[str, Any]:
        active: Any = old.get("active") if old else None
        if not _valid_active(active):
            saved = _read_json_or_none(self.active_path)
            active = saved if _valid_active(saved) else _empty_active()
        active.setdefault("history", [])
        data: dict[str, Any] = {"experiments": self._scan(), "active": active}
        if write:
            self._write_locked(data)
        return data

    def rebuild(self) -> dict[str, dict[str, Any]]:
        """Regenerate the index from ``outputs/*/run.json``, keeping the active pointer and its history
        (from the old index when readable, else from ``outputs/.lorakit_active.json``)."""
        with self._lock():
            try:
                old = self._read()
            except _Corrupt:
                old = None
            return self._rebuild_locked(old)["experiments"]

    def sync(self, exp_id: str) -> dict[str, Any]:
        """Re-read ``outputs/<exp_id>/`` and store its entry. The trainer calls this at run start, on each
        new best and at the end. Safe under concurrent writers."""
        folder = self.folder(exp_id)
        with self._lock():
            entry = entry_from_folder(folder)
            data = self._load_locked(quiet_missing=True)
            data["experiments"][exp_id] = entry
            self._write_locked(data)
        return entry

    def remove(self, exp_id: str) -> None:
        """Drop an entry (the folder is left alone; ``rebuild`` would bring it back if it still exists)."""
        if not self.root.is_dir():
            return
        with self._lock():
            data = self._load_locked(quiet_missing=True)
            if data["experiments"].pop(exp_id, None) is not None:
                self._write_locked(data)

    def set_active(
        self,
        exp_id: str | None,
        *,
        user: str | None = None,
        action: str = "rollback",
        when: str | None = None,
    ) -> dict[str, Any] | None:
        """Make ``exp_id`` the active experiment and record the change in the history.

        Returns the history record, or None when ``exp_id`` already was the active one. The caller
        checks that the experiment exists and completed (see :mod:`lorakit.runs.rollback`).
        """
        with self._lock():
            data = self._load_locked(quiet_missing=True)
            previous = data["active"].get("exp_id")
            if previous == exp_id:
                return None
            record = {
                "exp_id": exp_id,
                "previous": previous,
                "time": when or time.strftime("%Y-%m-%d %H:%M:%S"),
                "user": user,
                "action": action,
            }
            data["active"]["exp_id"] = exp_id
            data["active"]["history"].append(record)
            # The sidecar first: if we die between the two writes, a rebuild still knows the pointer.
            write_bytes_atomic(self.active_path, dumps_json(data["active"]).encode("utf-8"))
            self._write_locked(data)
        return record


class _TimeoutReporting:
    """A FileLock context that turns a lock timeout into a one-line user error."""

    def __init__(self, lock: Any, path: Path):
        self._lock = lock
        self._path = path

    def __enter__(self) -> None:
        import filelock

        try:
            # filelock polls every 50 ms by default; a write takes a few ms, so poll faster.
            self._lock.acquire(poll_interval=0.002)
        except filelock.Timeout:
            raise LorakitError(
                f"{self._path}: still locked by another lorakit process after {LOCK_TIMEOUT_S:.0f}s; "
                "if none is running, delete the lock file"
            ) from None

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
