"""The experiment index: ``outputs/experiment_index.json``, a cache of every experiment folder.

The folders are the truth. An entry is rebuilt from ``run.json``, ``metrics.json``, ``label_map.json`` and
``env_info.json`` whenever the trainer calls :meth:`ExperimentIndex.sync`; a missing or damaged index (one
that is not JSON, or whose entries have the wrong shape) is rebuilt from the folders with a warning, and a
folder with a damaged file is left out of it, with a warning naming the file. Writers take a lock on a
sibling ``.lock`` file and replace the index by write-to-temp-and-rename, so no update is lost and a reader
never sees half a file (readers take no lock). The active experiment (``lorakit rollback``) is the one
thing the folders cannot tell; it lives in the index and, so that it survives losing the index, in
``outputs/.lorakit_active.json`` too.

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

from .. import readback as rb
from ..conventions import greater_is_better, is_better, task_type_for
from ..errors import DamagedFile, LorakitError, LorakitWarning, did_you_mean
from ..fsutil import dumps_json, write_bytes_atomic
from .layout import INDEX_FILE, RunLayout, outputs_root

ACTIVE_FILE = ".lorakit_active.json"
LOCK_TIMEOUT_S = 120.0


class IndexWarning(LorakitWarning):
    """The index was missing or damaged and has been rebuilt, or a folder with a damaged file was skipped."""


class ExperimentNotFound(LorakitError):
    """No experiment of that id in the outputs folder."""


class ExperimentFolderError(DamagedFile):
    """A folder read as an experiment has no ``run.json``: ``<folder>/run.json: damaged (missing)``."""


class _Corrupt(Exception):
    """The index file exists but is not a valid index (unparsable, truncated, wrong shape)."""


_TEXT = rb.optional(rb.STRING)
_HISTORY = rb.fields({"exp_id": _TEXT, "previous": _TEXT, "time": _TEXT, "user": _TEXT, "action": _TEXT})
ACTIVE_CHECK = rb.fields({"exp_id": _TEXT, "history": rb.list_of(_HISTORY)})
# An entry as entry_from_folder builds it; every key optional (older indexes lack some), each of its type,
# since ls, compare and the scheduler's estimates use them without looking
ENTRY_CHECK = rb.fields(
    {
        "create_time": _TEXT,
        "task_type": _TEXT,
        "base_config": _TEXT,
        "key_params": rb.OBJECT,
        "best_metrics": rb.OBJECT,
        "best_epoch": rb.optional(rb.kind(int, str)),
        "output_path": _TEXT,
        "device_used": _TEXT,
        "env_version": _TEXT,
        "status": _TEXT,
        "end_time": _TEXT,
        "tasks": rb.dict_of(rb.list_of(rb.kind(str, int, float))),
        "headline": _TEXT,
        "epochs_done": rb.INTEGER,
        "peak_memory_mb": rb.optional(rb.NUMBER),
        "peak_reserved_mb": rb.optional(rb.NUMBER),
        "world_size": rb.optional(rb.INTEGER),
        "precision": _TEXT,
        "notes": rb.list_of(rb.STRING),
        "error": _TEXT,
    }
)
INDEX_CHECK = rb.fields(
    {"experiments": rb.dict_of(ENTRY_CHECK), "active": ACTIVE_CHECK}, required=("experiments",)
)


def _empty_active() -> dict[str, Any]:
    return {"exp_id": None, "history": []}


def _valid_active(value: Any) -> bool:
    return isinstance(value, dict) and ACTIVE_CHECK(value, "") is None


def _best_from_epochs(metrics: dict[str, Any], headline: str) -> dict[str, Any]:
    """The best epoch when metrics.json has no ``best`` block yet (by the headline metric, in the
    direction its metric plugin gives)."""
    best: dict[str, Any] = {}
    best_value = None
    greater: bool | None = None
    for key, values in metrics.items():
        if not (key.startswith("epoch_") and isinstance(values, dict)):
            continue
        value = values.get(headline)
        if not isinstance(value, (int, float)):
            continue
        if greater is None:
            greater = greater_is_better(headline, None)
        if is_better(value, best_value, greater):
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

    Raises :class:`ExperimentFolderError` when ``run.json`` is missing, and
    :class:`~lorakit.errors.DamagedFile` when any of the four files is damaged; the other three are
    optional (a run that has just started has no metrics yet).
    """
    layout = RunLayout(Path(folder))
    try:
        run = layout.read_run()
    except rb.MissingFile:
        raise ExperimentFolderError(layout.run_info, "missing") from None
    metrics = layout.read_metrics()
    label_map = layout.read_label_map()
    env = layout.read_env()

    tasks = run.tasks
    if not isinstance(tasks, dict):
        tasks = {
            task: list(spec.get("labels", [])) if isinstance(spec, dict) else list(spec)
            for task, spec in (label_map.get("tasks") or {}).items()
        }
    headline = run.headline
    best = metrics.get("best")
    if not isinstance(best, dict):
        best = _best_from_epochs(metrics, headline)
    task_type = run.task_type or label_map.get("task_type")
    if not task_type and tasks:
        task_type = task_type_for(len(tasks))
    return {
        "create_time": run.create_time,
        "task_type": task_type,
        "base_config": run.base_config,
        "key_params": dict(run.key_params or {}),
        "best_metrics": {key: value for key, value in best.items() if key != "epoch"},
        "best_epoch": best.get("epoch"),
        "output_path": str(layout.root.resolve()),
        "device_used": run.device_used or env.get("device"),
        "env_version": run.env_version or _env_version(env),
        "status": run.status,
        "end_time": run.end_time,
        "tasks": tasks,
        "headline": headline,
        "epochs_done": sum(1 for key in metrics if key.startswith("epoch_")),
        # measured peaks: the scheduler's memory estimates calibrate from these
        "peak_memory_mb": run.get("peak_memory_mb", env.get("peak_memory_mb")),
        "peak_reserved_mb": run.get("peak_reserved_mb", env.get("peak_reserved_mb")),
        "world_size": run.get("world_size", 1),
        # the precision the run used (fp32 | bf16 | fp16): runs in different precisions are not compared blind
        "precision": run.precision,
        "notes": list(run.notes or []),
        "error": run.error,
        # the test split's metrics, and per-class figures: test.avg_f1, <task>.<label>_f1, test.<task>.<label>_f1
        **_measured(layout, metrics),
    }


def _measured(layout: RunLayout, metrics: dict[str, Any]) -> dict[str, Any]:
    """``test_metrics`` (metrics.json ``test`` plus the test split's per-class figures) and
    ``class_metrics`` (the best epoch's per-class figures), flat, keyed ``<task>.<label>_<figure>``. A
    damaged reports.json leaves the per-class keys out, with a warning; the entry stands."""
    try:
        reports = layout.read_reports()
    except DamagedFile as exc:
        warnings.warn(f"{exc}; its per-class figures are left out of the index", IndexWarning, stacklevel=3)
        reports = {}
    test = metrics.get("test")
    return {
        "test_metrics": {**(test if isinstance(test, dict) else {}), **_per_class(reports.get("test"))},
        "class_metrics": _per_class(reports.get("best")),
    }


def _per_class(report: Any) -> dict[str, float]:
    flat: dict[str, float] = {}
    for task, one in ((report or {}).get("tasks") or {}).items():
        for label, figures in one["classes"].items():
            for figure in ("f1", "precision", "recall"):
                if isinstance(figures.get(figure), (int, float)):
                    flat[f"{task}.{label}_{figure}"] = figures[figure]
    return flat


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
        """The index as stored; None when there is none. Raises _Corrupt (with the reason) when it is
        damaged: not JSON, truncated, or an entry or the active block of the wrong shape."""
        try:
            data = rb.read_json(self.path, INDEX_CHECK)
        except rb.MissingFile:
            return None
        except DamagedFile as exc:
            raise _Corrupt(exc.reason) from None
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
            state = " was missing"
        except _Corrupt as exc:
            state = f": damaged ({exc})"
        missing = state == " was missing"
        data = self._rebuild_locked(None, write=bool(not missing or self._has_folders()))
        if not missing or (data["experiments"] and not quiet_missing):
            warnings.warn(
                f"experiment index {self.path}{state}; rebuilt from "
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
            except DamagedFile as exc:  # the folder is left as it is: the user's evidence
                warnings.warn(f"skipped {run_json.parent}: {exc}", IndexWarning, stacklevel=3)
        return experiments

    def _has_folders(self) -> bool:
        return any(self.root.glob("*/run.json")) or self.active_path.exists()

    def _rebuild_locked(self, old: dict[str, Any] | None, *, write: bool = True) -> dict[str, Any]:
        active: Any = old.get("active") if old else None
        if not _valid_active(active):
            active = self._read_active_file()
        active.setdefault("history", [])
        data: dict[str, Any] = {"experiments": self._scan(), "active": active}
        if write:
            self._write_locked(data)
        return data

    def _read_active_file(self) -> dict[str, Any]:
        """``.lorakit_active.json``, the copy of the active pointer that survives losing the index; a
        damaged one is warned about and read as "no active experiment" (it is rewritten by the next
        ``lorakit rollback``)."""
        try:
            saved = rb.read_json(self.active_path, ACTIVE_CHECK, missing_ok=True)
        except DamagedFile as exc:
            warnings.warn(f"{exc}; the active experiment is not known", IndexWarning, stacklevel=4)
            return _empty_active()
        return saved if saved is not None else _empty_active()

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
