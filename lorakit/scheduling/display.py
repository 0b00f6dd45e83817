"""What the user sees: job rows (queue state + the experiment folder's progress), tables, a live board."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..conventions import DEFAULT_HEADLINE
from ..errors import DamagedFile
from ..runs.layout import RunLayout
from .queue import Job

COLUMNS = ("job", "exp_id", "priority", "state", "device", "epoch", "best", "note")


def folder_progress(outputs: Path, exp_id: str) -> tuple[int, str | None, float | None]:
    """Epochs done, the headline metric's name and its best value, from metrics.json and run.json.

    Redrawn every second while jobs run: a missing or damaged file shows as no progress, without a
    warning each time (``lorakit show`` names the damage).
    """
    layout = RunLayout(outputs / exp_id)
    try:
        if not layout.metrics.exists():
            return 0, None, None
        metrics = layout.read_metrics()
    except (DamagedFile, OSError):
        return 0, None, None
    try:
        run = layout.read_run_if_any()
    except (DamagedFile, OSError):
        run = None
    headline = run.headline if run is not None else DEFAULT_HEADLINE
    epochs = sum(1 for key in metrics if key.startswith("epoch_"))
    best = metrics.get("best")
    value = best.get(headline) if isinstance(best, dict) else None
    return epochs, headline, float(value) if isinstance(value, (int, float)) else None


def job_row(job: Job, outputs: Path) -> dict[str, Any]:
    """One job as ``lorakit queue`` shows it (and ``--json`` prints it)."""
    fresh_start = job.state == "queued" and job.start_mode != "resume"
    epochs, metric, best = (0, None, None) if fresh_start else folder_progress(outputs, job.exp_id)
    return {
        "job": job.id,
        "exp_id": job.exp_id,
        "priority": job.priority,
        "state": job.state,
        "device": job.device or "",
        "epochs_done": epochs,
        "epochs": job.epochs,
        "best_metric": metric,
        "best": best,
        "note": job.note,
        "exit_code": job.exit_code,
        "log": job.log_path,
        "attempts": job.attempts,
        "preemptions": job.preemptions,
        "estimate_mb": job.memory_mb if job.memory_mb is not None else job.estimate_mb,
        "reserved_mb": job.reserved_mb,
    }


def _cells(row: dict[str, Any], note_width: int) -> list[str]:
    epoch = f"{row['epochs_done']}/{row['epochs']}" if row["epochs"] else str(row["epochs_done"] or "")
    best = f"{row['best_metric']} {row['best']:.4f}" if row["best"] is not None else ""
    note = row["note"] or ""
    if len(note) > note_width:
        note = note[: note_width - 1] + "…"
    return [str(row["job"]), row["exp_id"], row["priority"], row["state"], row["device"], epoch, best, note]


def render_table(rows: Sequence[dict[str, Any]], *, note_width: int = 60) -> str:
    """A plain-text table of job rows."""
    from tabulate import tabulate

    if not rows:
        return "(no jobs)"
    return tabulate([_cells(row, note_width) for row in rows], headers=list(COLUMNS), tablefmt="simple")


class Board:
    """Scheduler output: event lines always; on a terminal, also a status table redrawn in place."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._drawn = 0
        self._last = 0.0
        self._table = ""

    def _erase(self) -> None:
        if self._drawn:
            # cursor up over the old table, then clear to the end of the screen
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0
            self._last = 0.0  # redraw at the next refresh, not a second later

    def event(self, message: str) -> None:
        """One timestamped line (above the live table on a terminal)."""
        self._erase()
        self.stream.write(f"{time.strftime('%H:%M:%S')} {message}\n")
        self.stream.flush()

    def refresh(self, rows: Callable[[], Sequence[dict[str, Any]]], *, every_s: float = 1.0) -> None:
        """Redraw the table (terminal only), at most once per ``every_s``."""
        if not self.live or time.monotonic() - self._last < every_s:
            return
        self._last = time.monotonic()
        table = render_table(rows(), note_width=40)
        if self._drawn and table == self._table:
            return  # unchanged: no flicker
        self._table = table
        self._erase()
        self.stream.write(table + "\n")
        self.stream.flush()
        self._drawn = table.count("\n") + 1

    def close(self) -> None:
        self._drawn = 0
