"""Jobs a dead scheduler left behind, and how a job is asked to stop.

A scheduler killed hard (SIGKILL, a crash, a reboot) leaves rows ``running``. The next scheduler cannot
adopt those processes (they are not its children): it asks any that still live to checkpoint, waits for
them to go, and requeues them from what their folders say.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from ..proctree import alive, is_lorakit, kill_tree, wait_gone
from .launch import read_run
from .queue import Job, JobQueue

RECOVER_WAIT_S = 120.0


def preempt_signal(job: Job) -> int:
    """The signal that makes a job checkpoint and exit 75."""
    # every job, one process or `lorakit train --nproc N` (which forwards it to its ranks), checkpoints on it
    return signal.SIGUSR1


def recover_orphans(queue: JobQueue, outputs: Path, event: Callable[[str], None]) -> list[int]:
    """Settle every job left ``running``: done, failed, cancelled or preempted (resumable). Returns their ids."""
    settled = []
    for job in queue.jobs(["running"]):
        if job.pid and is_training_process(job.pid):
            _stop_orphan(job.pid, preempt_signal(job))
        run = read_run(outputs, job.exp_id)
        status = run.status if run is not None else None
        state = {"completed": "done", "failed": "failed"}.get(status or "", "preempted")
        if job.cancel_requested and state == "preempted":
            state = "cancelled"
        queue.update(job.id, state=state, start_mode="resume", pid=None, ended_at=time.time())
        queue.add_note(job.id, f"found running after its scheduler stopped: {state}")
        event(f"job {job.id} {job.exp_id}: left running by a stopped scheduler: {state}")
        settled.append(job.id)
    return settled


def _stop_orphan(pid: int, signum: int) -> None:
    """Ask a job left running to checkpoint; kill its whole tree if it has not gone after the wait (the job
    is requeued next: two processes must never train into one folder)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # it may end between look and signal
        os.kill(pid, signum)
    deadline = time.monotonic() + RECOVER_WAIT_S
    while is_training_process(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if is_training_process(pid):
        kill_tree(pid)
        wait_gone([pid])


def is_training_process(pid: int) -> bool:
    """True while ``pid`` is alive and (where /proc tells) a lorakit process: a pid is reused, and a stranger
    that got it must never be signalled."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid now belongs to someone else
        return False
    if not Path("/proc/self").exists():  # no /proc to ask (macOS): alive is all we know
        return True
    return alive(pid) and is_lorakit(pid)  # a zombie has exited already
