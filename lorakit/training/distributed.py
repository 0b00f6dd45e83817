"""Data-parallel training of one experiment through torchrun (torch.distributed), never a home-made launcher.

``lorakit train CONFIG --nproc N`` re-runs itself under ``python -m torch.distributed.run`` with N worker
processes. Accelerate picks the process group up from torchrun's environment (NCCL on GPUs, gloo on CPU);
rank 0 alone writes the experiment folder. Stop signals sent to the launcher are forwarded to the workers,
which agree on the step to stop at, checkpoint, and exit. Each failing rank writes its one-line reason to a
file of its own (torchrun stops the others when one fails), which the launcher prints and records.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..conventions import stop_exit_code
from ..proctree import LAUNCHER_ENV, catches, cmdline, descendants, kill_tree, pdeathsig_preexec
from ..runs.record import RunInfo
from .loop import STOP_SIGNALS, early_signal


def is_main_rank() -> bool:
    """True in rank 0 of a distributed run (torchrun sets RANK) and in a run of one process: the process
    that checks and writes the experiment folder."""
    return int(os.environ.get("RANK", "0")) == 0


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


#: why a rank failed when it said nothing (a rank killed by a signal writes no error file)
SILENT_RANK = "died without an error of its own (killed by a signal?); torchrun's report is in the log"
#: how a rank reads when a peer is gone: a consequence, not a cause
_PEER_LOST = re.compile(
    r"Connection (reset|closed) by peer|Broken pipe|ncclRemoteError|communicator was aborted|Socket Timeout"
)


def root_cause(errors: dict[int, str], nproc: int | None = None) -> tuple[int | None, str] | None:
    """The failure that explains the others: an out-of-memory error first; else the lowest rank's error
    that is more than a lost peer (the others then fail on a broken connection); else the first rank that
    said nothing (killed by a signal: the host out of memory, say); else the lowest rank's. The rank is
    None when no rank spoke: which one died is unknown."""
    from ..scheduling.outcome import is_oom_text

    silent = [rank for rank in range(nproc or 0) if rank not in errors]
    if not errors:
        return (None, SILENT_RANK) if nproc else None
    oom = [rank for rank, text in sorted(errors.items()) if is_oom_text(text)]
    if oom:
        return oom[0], errors[oom[0]]
    real = [rank for rank, text in sorted(errors.items()) if not _PEER_LOST.search(text)]
    if real:
        return real[0], errors[real[0]]
    if silent:
        return silent[0], SILENT_RANK
    return min(errors), errors[min(errors)]


def _read_run(run_json: Path) -> RunInfo | None:
    from ..scheduling.launch import read_run

    return read_run(run_json.parent.parent, run_json.parent.name)


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def _record_failure(run_json: Path, error: str) -> None:
    """run.json says ``failed`` with ``error``, whatever rank 0 had time to write (torchrun stops the other
    ranks when one fails: rank 0 may have been stopped as if preempted, or killed mid-step)."""
    from ..runs.index import ExperimentIndex
    from ..runs.layout import RunLayout

    info = _read_run(run_json)
    if info is None or info.status == "completed":
        return
    info.update(status="failed", error=error)
    RunLayout(run_json.parent).write_run(info)
    ExperimentIndex(run_json.parent.parent).sync(run_json.parent.name)


def _is_rank(pid: int) -> bool:
    """A torchrun worker running lorakit (a worker forked but not yet exec'd still reads as torchrun)."""
    line = cmdline(pid)
    return b"lorakit" in line and b"torch.distributed.run" not in line


class _Forwarder:
    """The launcher's handler for stop signals: every rank gets the signal, however deep and whatever its
    session, and a rank still starting gets it once its own handler is installed (before that the
    signal's default action would kill it, and torchrun would call the job failed)."""

    def __init__(self, nproc: int):
        self.nproc = nproc
        self.received: list[str] = []
        self.root: int | None = None
        self._pending: int | None = None
        self._delivered: set[int] = set()

    def __call__(self, signum: int, frame: Any) -> None:
        self.received.append(signal.Signals(signum).name)
        self._pending, self._delivered = signum, set()
        self.deliver()

    def deliver(self) -> None:
        if self.root is None or self._pending is None:
            return
        signum = self._pending
        with contextlib.suppress(OSError):
            ranks = [p for p in descendants(self.root) if _is_rank(p)]
            for rank in ranks:
                if rank not in self._delivered and catches(rank, signum):
                    os.kill(rank, signum)
                    self._delivered.add(rank)
        if len(self._delivered) >= self.nproc:
            self._pending = None


def _run_torchrun(cmd: list[str], env: dict[str, str], forwarder: _Forwarder) -> int:
    """Start torchrun and wait for it, passing stop signals on; its whole tree is killed if we leave early."""
    # A session of its own: the terminal's Ctrl-C reaches us alone, and we decide what the ranks get.
    # torchrun dies with us (PDEATHSIG), and each rank with torchrun (commands/train.py).
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, preexec_fn=pdeathsig_preexec())
    forwarder.root = proc.pid
    try:
        while True:
            try:
                return proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                forwarder.deliver()  # a signal that came while ranks were starting
    finally:
        if proc.poll() is None:  # we are leaving on an exception: leave no rank behind
            kill_tree(proc.pid)
            proc.wait()


def launch(nproc: int, train_args: list[str], run_json: Path) -> int:
    """Run ``lorakit train *train_args`` as ``nproc`` torchrun workers; returns the exit code to use.

    Exit codes follow a single-process run: 0 completed, 75 preempted (checkpoint saved), 130 interrupted,
    2 a user error found before training started, 1 a failure. A failing rank's reason (out of memory on
    rank 3, say) is printed (one ``Error: rank N: ...`` line per rank, which the scheduler reads in the
    job's log) and recorded in run.json, not only rank 0's view of it.
    """
    before = _mtime(run_json)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "lorakit", "train", *train_args,
    ]  # fmt: skip
    forwarder = _Forwarder(nproc)
    previous = {
        getattr(signal, name): signal.signal(getattr(signal, name), forwarder) for name in STOP_SIGNALS
    }
    errors_dir = Path(tempfile.mkdtemp(prefix="lorakit-ranks-"))
    try:
        early = early_signal() or (forwarder.received[-1] if forwarder.received else None)
        if early is not None:  # stopped before any rank started: nothing to checkpoint, nothing written
            return stop_exit_code(early)
        env = {**os.environ, RANK_ERRORS_ENV: str(errors_dir), LAUNCHER_ENV: str(os.getpid())}
        code = _run_torchrun(cmd, env, forwarder)
        errors = rank_errors(errors_dir)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(errors_dir, ignore_errors=True)
    if code == 0:
        return 0
    written = _mtime(run_json) != before
    return _failed_exit(forwarder.received, errors, run_json, nproc=nproc, written=written)


def _failed_exit(
    received: list[str], errors: dict[int, str], run_json: Path, *, nproc: int, written: bool
) -> int:
    """The exit code of a torchrun that failed: stopped on our signal, or a rank failed (then say which)."""
    run = _read_run(run_json) if written else None
    status = run.status if run is not None else None
    if received and status != "failed":
        # the ranks stopped as asked (those that did not finish their checkpoint resume from the last one)
        return stop_exit_code(received[-1])
    if not written:
        # the ranks stopped before writing anything: a user error, already printed by them, unless one
        # of them failed (a user error is never recorded as a rank's failure)
        _print_errors(errors, None)
        return 1 if errors else 2
    cause = root_cause(errors, nproc)
    _print_errors(errors, cause)
    if cause is not None and (errors or status in ("running", "preempted")):
        # (with no rank's word and rank 0's own "failed", rank 0 said it best: keep it)
        _record_failure(run_json, f"rank {cause[0]}: {cause[1]}" if cause[0] is not None else cause[1])
    return 1


def _print_errors(errors: dict[int, str], cause: tuple[int | None, str] | None) -> None:
    """One ``Error:`` line per failing rank, the silent one included: the scheduler reads them in the log."""
    lines = [f"rank {rank}: {reason}" for rank, reason in sorted(errors.items())]
    if cause is not None and cause[1] == SILENT_RANK:
        lines.insert(0, f"rank {cause[0]}: {SILENT_RANK}" if cause[0] is not None else SILENT_RANK)
    for line in lines:
        print(f"Error: {line}", file=sys.stderr, flush=True)
