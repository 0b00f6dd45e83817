"""Jobs a dead scheduler left behind, and how a job is asked to stop.

A scheduler killed hard (SIGKILL, a crash, a reboot) leaves rows ``running``. The next scheduler cannot
adopt those processes (they are not its children): it asks any that still live to checkpoint, waits for
them to go, and requeues them from what their folders say.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

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
            os.kill(job.pid, preempt_signal(job))
            deadline = time.monotonic() + RECOVER_WAIT_S
            while is_training_process(job.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        status = (read_run(outputs, job.exp_id) or {}).get("status")
        state = {"completed": "done", "failed": "failed"}.get(status or "", "preempted")
        if job.cancel_requested and state == "preempted":
            state = "cancelled"
        queue.update(job.id, state=state, start_mode="resume", pid=None, ended_at=time.time())
        queue.add_note(job.id, f"found running after its scheduler stopped: {state}")
        event(f"job {job.id} {job.exp_id}: left running by a stopped scheduler: {state}")
        settled.append(job.id)
    return settled


def is_training_process(pid: int) -> bool:
    """True while ``pid`` is alive and (where /proc tells) a lorakit process."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid now belongs to someone else
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return b"lorakit" in cmdline and state != "Z"  # a zombie has exited already
