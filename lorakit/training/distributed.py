"""Data-parallel training of one experiment through torchrun (torch.distributed), never a home-made launcher.

``lorakit train CONFIG --nproc N`` re-runs itself under ``python -m torch.distributed.run`` with N worker
processes. Accelerate picks the process group up from torchrun's environment (NCCL on GPUs, gloo on CPU);
rank 0 alone writes the experiment folder. Stop signals sent to the launcher are forwarded to the workers,
which agree on the step to stop at, checkpoint, and exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..fsutil import read_json
from .loop import PREEMPTED_EXIT, STOP_SIGNALS


def in_worker() -> bool:
    """True inside a torchrun worker (torchrun sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def default_nproc(gpus: int) -> int:
    """``resources.gpus`` processes when that many GPUs are visible, else one."""
    if gpus <= 1:
        return 1
    import torch

    return gpus if torch.cuda.device_count() >= gpus else 1


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc): torchrun's workers."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def launch(nproc: int, train_args: list[str], run_json: Path) -> int:
    """Run ``lorakit train *train_args`` as ``nproc`` torchrun workers; returns the exit code to use.

    Exit codes follow a single-process run: 0 completed, 75 preempted (checkpoint saved), 130 interrupted,
    2 a user error found before training started, 1 a failure.
    """
    before = run_json.stat().st_mtime_ns if run_json.exists() else None
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "lorakit", "train", *train_args,
    ]  # fmt: skip
    # A session of its own: the terminal's Ctrl-C reaches us, and we decide what the workers get.
    proc = subprocess.Popen(cmd, start_new_session=True)
    received: list[str] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        for pid in _children(proc.pid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name)
        previous[sig] = signal.signal(sig, forward)
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    after = run_json.stat().st_mtime_ns if run_json.exists() else None
    if code == 0:
        return 0
    if after is None or after == before:
        return 2  # the workers stopped before writing anything: a user error, already printed by them
    status = read_json(run_json).get("status")
    if status == "preempted":
        return 130 if received and received[-1] == "SIGINT" else PREEMPTED_EXIT
    return 1
