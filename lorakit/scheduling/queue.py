"""The job queue: one SQLite database per outputs folder, ``<outputs>/scheduler.sqlite3``.

Several processes use it at once (``lorakit submit`` from any shell, the scheduler, ``lorakit cancel``):
the database runs in WAL mode so readers never block the writer, every write is one ``BEGIN IMMEDIATE``
transaction, and a busy database is waited for (``busy_timeout``) instead of failing. Each operation opens
its own short-lived connection, so nothing holds the file between calls. A damaged database (not SQLite,
truncated, malformed, or another program's) is ``<path>: damaged (<reason>)``, exit 2; it is never
re-created over.

Job states::

    queued ──start──> running ──exit 0──> done
      ^                 │  └──error──> failed          (CUDA OOM: back to queued once, half the batch)
      │                 └──SIGUSR1/Ctrl-C, checkpoint──> preempted ──start (--resume)──> running
      └─ cancel: queued/preempted → cancelled; running → SIGTERM, checkpoint → cancelled
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import attrs

from .. import readback as rb
from ..errors import LorakitError

DB_FILE = "scheduler.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

PRIORITY_RANK = {"low": 0, "medium": 1, "high": 2}
STATES = ("queued", "running", "preempted", "done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running", "preempted")
PENDING_STATES = ("queued", "preempted")
FINAL_STATES = ("done", "failed", "cancelled")
# How the next start of a job treats its folder: a fresh run, --resume, or --force.
START_MODES = ("new", "resume", "force")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    exp_id           TEXT    NOT NULL,
    config_path      TEXT    NOT NULL,
    overrides        TEXT    NOT NULL DEFAULT '[]',
    extra_overrides  TEXT    NOT NULL DEFAULT '[]',
    priority         TEXT    NOT NULL,
    rank             INTEGER NOT NULL,
    state            TEXT    NOT NULL,
    start_mode       TEXT    NOT NULL DEFAULT 'new',
    gpus             INTEGER NOT NULL DEFAULT 1,
    epochs           INTEGER,
    memory_mb        INTEGER,
    estimate_mb      INTEGER,
    estimate_source  TEXT,
    device           TEXT,
    reserved_mb      INTEGER,
    pid              INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    preemptions      INTEGER NOT NULL DEFAULT 0,
    oom_retries      INTEGER NOT NULL DEFAULT 0,
    exit_code        INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    notes            TEXT    NOT NULL DEFAULT '[]',
    run_notes        TEXT    NOT NULL DEFAULT '[]',
    log_path         TEXT,
    batch            TEXT,
    submitted_at     REAL    NOT NULL,
    started_at       REAL,
    ended_at         REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""

_JSON_COLUMNS = ("overrides", "extra_overrides", "notes", "run_notes")
_UPDATABLE = frozenset(
    {
        "extra_overrides",
        "state",
        "start_mode",
        "estimate_mb",
        "estimate_source",
        "device",
        "reserved_mb",
        "pid",
        "attempts",
        "preemptions",
        "oom_retries",
        "exit_code",
        "cancel_requested",
        "notes",
        "run_notes",
        "log_path",
        "started_at",
        "ended_at",
    }
)


class QueueError(LorakitError):
    """A queue request that cannot be honoured (unknown job, duplicate experiment, ...)."""


@attrs.define(kw_only=True, frozen=True)
class Job:
    """One row of the queue. ``overrides`` are the submitter's ``--set`` values; ``extra_overrides`` the
    scheduler's own (the OOM retry's smaller batch), applied after them."""

    id: int
    exp_id: str
    config_path: str
    overrides: tuple[str, ...]
    extra_overrides: tuple[str, ...]
    priority: str
    rank: int
    state: str
    start_mode: str
    gpus: int
    epochs: int | None
    memory_mb: int | None
    estimate_mb: int | None
    estimate_source: str | None
    device: str | None
    reserved_mb: int | None
    pid: int | None
    attempts: int
    preemptions: int
    oom_retries: int
    exit_code: int | None
    cancel_requested: bool
    notes: tuple[str, ...]
    run_notes: tuple[str, ...]
    log_path: str | None
    batch: str | None
    submitted_at: float
    started_at: float | None
    ended_at: float | None

    @property
    def all_overrides(self) -> list[str]:
        return [*self.overrides, *self.extra_overrides]

    @property
    def note(self) -> str:
        """The latest note (what the queue table shows)."""
        return self.notes[-1] if self.notes else ""


def _json_list(path: Path, row: sqlite3.Row, key: str) -> list[Any]:
    try:
        value = json.loads(row[key] or "[]")
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, list):
        raise rb.DamagedContent(path, f"job {row['id']}: column {key} is not a JSON list")
    return value


def _job(row: sqlite3.Row, path: Path) -> Job:
    data = dict(row)
    for key in _JSON_COLUMNS:
        data[key] = tuple(_json_list(path, row, key))
    data["cancel_requested"] = bool(data["cancel_requested"])
    return Job(**data)


class JobQueue:
    """The queue of one outputs folder."""

    def __init__(self, outputs: str | Path):
        self.root = Path(outputs)
        self.path = self.root / DB_FILE

    # ---- plumbing -----------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        companions = [self.path.with_name(self.path.name + suffix) for suffix in ("-wal", "-shm")]
        existed = [path.exists() for path in companions]
        # autocommit mode: transactions are the explicit BEGIN IMMEDIATE below
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            with rb.sqlite_errors(self.path):
                self._prepare(conn)
        except rb.DamagedFile:
            conn.close()
            # a damaged database is left as it was: without the -wal/-shm files this connection made
            for path, was in zip(companions, existed, strict=True):
                if not was:
                    path.unlink(missing_ok=True)
            raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version not in (0, SCHEMA_VERSION) or (tables - {"jobs", "sqlite_sequence"}):
            # another program's database: adding our table to it would hide that the queue is gone
            raise rb.DamagedContent(self.path, "not a lorakit queue database")
        if version == SCHEMA_VERSION and "jobs" not in tables:
            raise rb.DamagedContent(self.path, "the jobs table is missing")
        # checked first: switching a foreign database to WAL would change it
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")  # persistent: set once per database file
        if version != SCHEMA_VERSION:
            with _transaction(conn):
                # one statement at a time: executescript() would commit the open transaction first
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with rb.sqlite_errors(self.path), closing(self._connect()) as conn, _transaction(conn):
            yield conn

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Job]:
        if not self.path.exists():
            return []
        with rb.sqlite_errors(self.path), closing(self._connect()) as conn:
            return [_job(row, self.path) for row in conn.execute(sql, params)]

    # ---- reading ------------------------------------------------------------------------------------

    def jobs(self, states: Iterable[str] | None = None) -> list[Job]:
        """Jobs in submission order, optionally only those in ``states``."""
        if states is None:
            return self._read("SELECT * FROM jobs ORDER BY id")
        wanted = list(states)
        marks = ",".join("?" * len(wanted))
        return self._read(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", wanted)

    def pending(self) -> list[Job]:
        """Jobs waiting to run, in the order they get their turn: high > medium > low, FIFO within a level
        (a preempted job keeps its place)."""
        return self._read(
            "SELECT * FROM jobs WHERE state IN ('queued', 'preempted') ORDER BY rank DESC, id ASC"
        )

    def get(self, job_id: int) -> Job:
        found = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not found:
            raise QueueError(f"no job {job_id} in {self.path}")
        return found[0]

    # ---- writing ------------------------------------------------------------------------------------

    def submit(
        self,
        *,
        exp_id: str,
        config_path: str,
        overrides: Sequence[str] = (),
        priority: str = "medium",
        start_mode: str = "new",
        gpus: int = 1,
        epochs: int | None = None,
        memory_mb: int | None = None,
        batch: str | None = None,
    ) -> Job:
        """Add a job; refused while another job of the same experiment is queued, running or preempted."""
        if priority not in PRIORITY_RANK:
            raise QueueError(f"priority {priority!r} is not one of {', '.join(PRIORITY_RANK)}")
        if start_mode not in START_MODES:
            raise ValueError(f"start_mode {start_mode!r}")
        with self._write() as conn:
            clash = conn.execute(
                "SELECT id, state FROM jobs WHERE exp_id = ? AND state IN ('queued', 'running', 'preempted')",
                (exp_id,),
            ).fetchone()
            if clash is not None:
                raise QueueError(
                    f"experiment {exp_id!r} is already in the queue as job {clash['id']} ({clash['state']}); "
                    f"cancel it first (lorakit cancel {clash['id']})"
                )
            cursor = conn.execute(
                "INSERT INTO jobs (exp_id, config_path, overrides, priority, rank, state, start_mode, gpus,"
                " epochs, memory_mb, batch, submitted_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                (
                    exp_id,
                    config_path,
                    json.dumps(list(overrides), ensure_ascii=False),
                    priority,
                    PRIORITY_RANK[priority],
                    start_mode,
                    gpus,
                    epochs,
                    memory_mb,
                    batch,
                    time.time(),
                ),
            )
            job_id = cursor.lastrowid
        assert job_id is not None
        return self.get(job_id)

    def update(self, job_id: int, *, expect: Sequence[str] | None = None, **fields: Any) -> Job:
        """Set columns of one job; with ``expect``, only when its state is one of those (else QueueError)."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values = {
            key: json.dumps(list(value), ensure_ascii=False) if key in _JSON_COLUMNS else value
            for key, value in fields.items()
        }
        with self._write() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise QueueError(f"no job {job_id} in {self.path}")
            if expect is not None and row["state"] not in expect:
                raise QueueError(f"job {job_id} is {row['state']}, not {' or '.join(expect)}")
            if values:
                assignments = ", ".join(f"{key} = ?" for key in values)
                conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))
        return self.get(job_id)

    def add_note(self, job_id: int, note: str, *, for_run: bool = False) -> Job:
        """Append a note (shown by ``lorakit queue``); ``for_run`` notes also go to the run's run.json."""
        with self._write() as conn:
            row = conn.execute("SELECT id, notes, run_notes FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise QueueError(f"no job {job_id} in {self.path}")
            notes = [*_json_list(self.path, row, "notes"), note]
            run_notes = [*_json_list(self.path, row, "run_notes"), *([note] if for_run else [])]
            conn.execute(
                "UPDATE jobs SET notes = ?, run_notes = ? WHERE id = ?",
                (json.dumps(notes, ensure_ascii=False), json.dumps(run_notes, ensure_ascii=False), job_id),
            )
        return self.get(job_id)

    def cancel(self, job_id: int) -> Job:
        """Queued or preempted: cancelled at once. Running: flagged; the scheduler sends SIGTERM, the run
        checkpoints, and the job ends ``cancelled``. Finished jobs cannot be cancelled."""
        if not self.path.exists():
            raise QueueError(f"no job {job_id}: {self.path} does not exist")
        with self._write() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise QueueError(f"no job {job_id} in {self.path}")
            state = row["state"]
            if state in FINAL_STATES:
                raise QueueError(f"job {job_id} is already {state}")
            if state in PENDING_STATES:
                conn.execute(
                    "UPDATE jobs SET state = 'cancelled', ended_at = ? WHERE id = ?", (time.time(), job_id)
                )
            else:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.get(job_id)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: two submitters never both read "no clash" and then insert.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
