"""Data-parallel training of one experiment through torchrun (torch.distributed), never a home-made launcher.

``lorakit train CONFIG --nproc N`` re-runs itself under ``python -m torch.distributed.run`` with N worker
processes. Accelerate picks the process group up from torchrun's environment (NCCL on GPUs, gloo on CPU);
rank 0 alone writes the experiment folder. Stop signals sent to the launcher are forwarded to the workers,
which agree on the step to stop at, checkpoint, and exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..fsutil import read_json
from ..proctree import die_with_parent, kill_tree, signal_descendants
from .loop import PREEMPTED_EXIT, STOP_SIGNALS, early_signal


def in_worker() -> bool:
    """True inside a torchrun worker (torchrun sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def default_nproc(gpus: int) -> int:
    """``resources.gpus`` processes when that many GPUs are visible, else one."""
    if gpus <= 1:
        return 1
    import torch

    return gpus if torch.cuda.device_count() >= gpus else 1


RANK_ERRORS_ENV = "LORAKIT_RANK_ERRORS"


def record_rank_error(exc: BaseException) -> None:
    """In a worker: write this rank's one-line failure where the launcher collects them (torchrun kills
    the other ranks when one fails, so rank 0 alone cannot say what went wrong on rank 3)."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder:
        return
    from .runner import failure_reason

    rank = os.environ.get("RANK", "?")
    with contextlib.suppress(OSError):
        Path(folder, f"rank-{rank}.txt").write_text(failure_reason(exc), encoding="utf-8")


def rank_errors(folder: Path) -> dict[int, str]:
    """rank → its one-line failure, for every rank that recorded one."""
    errors: dict[int, str] = {}
    for path in sorted(folder.glob("rank-*.txt")):
        with contextlib.suppress(OSError, ValueError):
            errors[int(path.stem.split("-", 1)[1])] = path.read_text(encoding="utf-8").strip()
    return errors


def root_cause(errors: dict[int, str]) -> tuple[int, str] | None:
    """The failure that explains the others: an out-of-memory error first (the peers then fail on a
    broken connection), else the lowest rank's."""
    from ..scheduling.outcome import OOM_MARKERS

    if not errors:
        return None
    oom = [rank for rank, text in sorted(errors.items()) if any(m in text for m in OOM_MARKERS)]
    rank = oom[0] if oom else min(errors)
    return rank, errors[rank]


def _record_root_cause(run_json: Path, cause: tuple[int, str]) -> None:
    """A job whose ranks failed: run.json says so with the cause, whatever rank 0 had time to write."""
    from ..fsutil import write_json_atomic

    info = read_json(run_json) if run_json.is_file() else None
    if not isinstance(info, dict) or info.get("status") == "completed":
        return
    rank, reason = cause
    info.update(status="failed", error=f"rank {rank}: {reason}")
    write_json_atomic(run_json, info)
    from ..runs.index import ExperimentIndex

    ExperimentIndex(run_json.parent.parent).sync(run_json.parent.name)


def launch(nproc: int, train_args: list[str], run_json: Path) -> int:
    """Run ``lorakit train *train_args`` as ``nproc`` torchrun workers; returns the exit code to use.

    Exit codes follow a single-process run: 0 completed, 75 preempted (checkpoint saved), 130 interrupted,
    2 a user error found before training started, 1 a failure. A failing rank's reason (out of memory on
    rank 3, say) is printed and recorded in run.json, not only rank 0's view of it.
    """
    before = run_json.stat().st_mtime_ns if run_json.exists() else None
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "lorakit", "train", *train_args,
    ]  # fmt: skip
    errors_dir = Path(tempfile.mkdtemp(prefix="lorakit-ranks-"))
    env = {**os.environ, RANK_ERRORS_ENV: str(errors_dir)}
    received: list[str] = []
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        # every rank, however deep and whatever its session (torchrun's workers are its children today)
        for proc in started:
            signal_descendants(proc.pid, signum)

    previous = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name)
        previous[sig] = signal.signal(sig, forward)
    early = early_signal()
    if early is not None:  # stopped before any rank started: nothing to checkpoint, nothing written
        shutil.rmtree(errors_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        return 130 if early == "SIGINT" else PREEMPTED_EXIT
    # A session of its own: the terminal's Ctrl-C reaches us, and we decide what the workers get. torchrun
    # dies with us (PDEATHSIG), and each worker with torchrun (see commands/train.py).
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, preexec_fn=die_with_parent)
    started.append(proc)
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:  # we are leaving on an exception: leave no rank behind
            kill_tree(proc.pid)
            proc.wait()
    errors = rank_errors(errors_dir)
    shutil.rmtree(errors_dir, ignore_errors=True)
    after = run_json.stat().st_mtime_ns if run_json.exists() else None
    if code == 0:
        return 0
    cause = root_cause(errors)
    if cause is not None and not received:
        for rank, reason in sorted(errors.items()):
            print(f"Error: rank {rank}: {reason}", file=sys.stderr, flush=True)
        if after is not None and after != before:
            _record_root_cause(run_json, cause)
    if after is None or after == before:
        return 2  # the workers stopped before writing anything: a user error, already printed by them
    status = read_json(run_json).get("status")
    if status == "preempted":
        return 130 if received and received[-1] == "SIGINT" else PREEMPTED_EXIT
    return 1
