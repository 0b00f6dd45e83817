"""What a job's exit means: done, preempted, cancelled, an OOM worth one retry, or a failure.

The trainer exits 0 when it completed, 75 (``PREEMPTED_EXIT``) after checkpointing on SIGUSR1/SIGTERM,
130 after checkpointing on SIGINT, 2 on a user error and 1 on a crash; its run.json says what happened.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ..conventions import INTERRUPTED_EXIT, PREEMPTED_EXIT
from ..runs.layout import RunLayout
from ..runs.record import RunInfo
from .launch import log_tail, read_run
from .queue import Job

#: how running out of GPU memory reads, on any rank: PyTorch's allocator (CUDA, ROCm), a raw CUDA call,
#: cuBLAS/cuDNN workspaces, NCCL's buffers. A bare ``ncclSystemError`` is not among them: PyTorch words it
#: "System call (e.g. socket, malloc) ... failed" for a lost peer too; it counts with "out of memory".
OOM_PATTERNS = (
    r"OutOfMemoryError",  # torch.OutOfMemoryError, torch.cuda.OutOfMemoryError
    r"CUDA out of memory",
    r"HIP out of memory",
    r"CUDA error: out of memory",
    r"cudaErrorMemoryAllocation",
    r"CUBLAS_STATUS_ALLOC_FAILED",
    r"CUDNN_STATUS_ALLOC_FAILED",
    r"CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    r"Failed to CUDA calloc",  # NCCL
    r"Cuda failure( \d+)? 'out of memory'",  # NCCL's WARN line, and ncclUnhandledCudaError's last error
    r"(?i:nccl.*out of memory)",
)
_OOM = re.compile("|".join(OOM_PATTERNS))
MAX_OOM_RETRIES = 1
_ERROR_LINE = re.compile(r"^(Error: |\w*(Error|Exception)\b)")


@attrs.define(kw_only=True, frozen=True)
class Outcome:
    """The queue state a finished attempt leads to, and why."""

    state: str
    note: str | None = None
    start_mode: str | None = None
    extra_overrides: tuple[str, ...] | None = None
    run_note: bool = False


def is_oom_text(text: str) -> bool:
    """Whether ``text`` (an error message, a log line) says the GPU ran out of memory."""
    return _OOM.search(text) is not None


def is_oom(run: RunInfo | Mapping[str, Any] | None, log_lines: list[str]) -> bool:
    """Out of GPU memory on any rank, by run.json's error or by the job's log (where a multi-GPU job's
    launcher prints one ``Error: rank N: ...`` line per failing rank)."""
    error = run.get("error") if run is not None else None  # a record, or run.json's content as a dict
    return is_oom_text(str(error or "")) or any(is_oom_text(line) for line in log_lines)


def failure_reason(run: RunInfo | None, log_lines: list[str]) -> str:
    """One line: run.json's error when the run got that far, else the last error line of the log."""
    if run is not None and run.status == "failed" and run.error:
        return _shorten(str(run.error))
    for line in reversed(log_lines):
        if _ERROR_LINE.match(line.strip()):
            return _shorten(line.strip())
    last = next((line.strip() for line in reversed(log_lines) if line.strip()), "")
    return _shorten(last) if last else "no output"


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def oom_retry(job: Job) -> tuple[tuple[str, ...], str] | None:
    """Half the micro-batch (for an odd batch, its largest divisor below that), the accumulation multiplied
    to keep the effective batch, from the job's config; None when the batch cannot shrink."""
    from ..config.schema import load_config

    try:
        cfg, _ = load_config(job.config_path, job.all_overrides)
    except Exception:  # the config no longer loads: the retry would fail the same way
        return None
    batch, accum = cfg.train.batch_size, cfg.train.grad_accum
    if batch <= 1:
        return None
    # the largest divisor of the batch up to its half: an odd batch must not change the effective batch
    # (the world size stays: a multi-GPU job keeps its GPUs, so per-rank batch × accumulation is the rule)
    smaller = next(d for d in range(batch // 2, 0, -1) if batch % d == 0)
    more = accum * (batch // smaller)
    overrides = (*job.extra_overrides, f"train.batch_size={smaller}", f"train.grad_accum={more}")
    note = (
        f"CUDA out of memory with train.batch_size={batch}, train.grad_accum={accum}: retried with "
        f"train.batch_size={smaller}, train.grad_accum={more} (same effective batch), fresh start"
    )
    return overrides, note


def classify(job: Job, code: int, *, outputs: Path, stop_reason: str | None, log_path: str | None) -> Outcome:
    """The outcome of one attempt that exited with ``code`` (negative: killed by that signal)."""
    run = read_run(outputs, job.exp_id)
    if code == 0:
        return Outcome(state="done")
    if job.cancel_requested:
        kept = " (checkpoint kept: resume with lorakit train --resume)" if code == PREEMPTED_EXIT else ""
        return Outcome(state="cancelled", note=f"cancelled{kept}")
    stopped = code in (PREEMPTED_EXIT, INTERRUPTED_EXIT) or (
        stop_reason is not None and (code < 0 or (run is not None and run.status == "preempted"))
    )
    if stopped:
        return Outcome(state="preempted", note=stop_reason or f"stopped (exit {code})", start_mode="resume")
    lines = log_tail(log_path)
    if is_oom(run, lines) and job.oom_retries < MAX_OOM_RETRIES:
        retry = oom_retry(job)
        if retry is not None:
            overrides, note = retry
            return Outcome(
                state="queued", note=note, start_mode="force", extra_overrides=overrides, run_note=True
            )
    return Outcome(state="failed", note=f"exit {code}: {failure_reason(run, lines)}")


def record_run_notes(outputs: Path, job: Job) -> None:
    """Put the job's run notes (the OOM retry) into its run.json ``notes`` and refresh the index entry."""
    if not job.run_notes:
        return
    run = read_run(outputs, job.exp_id)
    if run is None:
        return
    if not run.add_notes(list(job.run_notes)):
        return
    RunLayout(outputs / job.exp_id).write_run(run)
    from ..runs.index import ExperimentIndex

    ExperimentIndex(outputs).sync(job.exp_id)
