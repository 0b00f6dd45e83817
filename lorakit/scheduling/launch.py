"""Turning a queued job into a command line, and its log into the experiment folder.

Each job is ``python -m lorakit train CONFIG --outputs OUT [--set ...] [--resume|--force]`` in its own
process, which loads plugins through entry points like any ``lorakit`` command. A job of more than one
GPU runs ``lorakit train --nproc N`` (torchrun, one rank per GPU). While a job runs, its stdout and stderr go to
``<outputs>/.scheduler-logs/job-<id>.log``: the trainer refuses a fresh start in a non-empty folder that
is not yet an experiment, so nothing may be written into ``<outputs>/<exp_id>/`` before it does. When an
attempt ends, its log is appended to ``<outputs>/<exp_id>/scheduler.log`` (the trainer writes its own
``train.log`` there).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

from ..errors import DamagedFile, LorakitWarning
from ..runs.layout import RunLayout
from ..runs.record import RunInfo
from .queue import Job

LOG_DIR = ".scheduler-logs"
FOLDER_LOG = "scheduler.log"


def read_run(outputs: Path, exp_id: str, *, strict: bool = False) -> RunInfo | None:
    """``<outputs>/<exp_id>/run.json`` (checked as :meth:`RunLayout.read_run` does), or None when missing.

    A damaged run.json raises :class:`~lorakit.errors.DamagedFile` with ``strict``; otherwise it is a
    warning and None (the scheduler goes on with its other jobs).
    """
    layout = RunLayout(Path(outputs) / exp_id)
    if not layout.run_info.exists():
        return None
    try:
        return layout.read_run()
    except DamagedFile as exc:
        if strict:
            raise
        warnings.warn(str(exc), LorakitWarning, stacklevel=2)
        return None


def start_flags(job: Job, outputs: Path) -> list[str] | None:
    """``--resume``/``--force`` for the job's next start, from its start mode and its folder now.

    None means there is nothing to run: the folder already holds the completed experiment (a job that
    finished just as it was stopped).
    """
    if job.start_mode == "force":
        return ["--force"]
    if job.start_mode == "new":
        return []
    folder = outputs / job.exp_id
    try:
        run = read_run(outputs, job.exp_id, strict=True)
    except DamagedFile:
        # never --force over a damaged folder: the resume stops on the damage and says so in the job's log
        return ["--resume"]
    if run is None:
        if RunLayout(folder).has_experiment_files():
            return ["--resume"]  # run.json is gone from an experiment: the same, said by the resume
        # stopped before the trainer wrote run.json: whatever it left is not resumable
        return ["--force"] if folder.is_dir() and any(folder.iterdir()) else []
    if run.status == "completed":
        return None
    return ["--resume"]


def job_command(job: Job, outputs: Path, flags: list[str]) -> tuple[str, ...]:
    """The job's command line (the scheduler's own Python, so the same environment and plugins)."""
    train = ["train", job.config_path, "--outputs", str(outputs)]
    for override in job.all_overrides:
        train += ["--set", override]
    train += flags
    if job.gpus > 1:
        # `lorakit train --nproc N` runs torchrun itself, forwards stop signals to the ranks and
        # maps their ending to lorakit's exit codes (75 preempted), like a one-process job
        train += ["--nproc", str(job.gpus)]
    return (sys.executable, "-m", "lorakit", *train)


def job_env(
    devices: tuple[int, ...], job: Job, uuids: Mapping[int, str | None] | None = None
) -> dict[str, str]:
    """What a job's process gets on top of the scheduler's environment.

    ``uuids`` maps the scheduler's device indices to the devices' UUIDs; a device without one is named by
    its index.
    """
    names = uuids or {}
    return {
        # UUIDs name the same device whatever CUDA's enumeration order, and are the only way to name a
        # MIG slice; a bare index is NVML's (PCI order), hence CUDA_DEVICE_ORDER. CPU jobs see no GPU.
        "CUDA_VISIBLE_DEVICES": ",".join(names.get(i) or str(i) for i in devices),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "LORAKIT_NO_PROGRESS": "1",  # a log file is no place for progress bars
        "LORAKIT_JOB_ID": str(job.id),
        "PYTHONUNBUFFERED": "1",
    }


def side_log(outputs: Path, job: Job) -> Path:
    """Where a job's output goes while it runs."""
    path = outputs / LOG_DIR / f"job-{job.id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def move_log_to_folder(outputs: Path, job: Job, log: Path) -> Path:
    """Append ``log`` to the experiment's scheduler.log (when the folder is an experiment) and remove it.

    Returns where the job's log now is.
    """
    folder = outputs / job.exp_id
    if not log.is_file() or not (folder / "run.json").is_file():
        return log
    target = folder / FOLDER_LOG
    with open(target, "ab") as out, open(log, "rb") as src:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    log.unlink()
    return target


def log_tail(path: str | Path | None, lines: int = 40) -> list[str]:
    """The last lines of a log (for error messages)."""
    if not path:
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
