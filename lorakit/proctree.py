"""A job's whole process tree: find it, signal it, kill it (Linux /proc; torch-free).

A job is not one process: ``lorakit train --nproc N`` starts torchrun, which starts N ranks, and both
torchrun and the ranks may start sessions of their own, so a process-group kill (``killpg``) misses them.
The tree is followed through parent links instead. To kill it, the tree is first frozen (SIGSTOP, top
down, until no new member appears: a stopped process cannot fork), then killed: nothing respawns in
between, and nothing is reparented away before it is found.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import time
from pathlib import Path


def _parents() -> dict[int, int]:
    """pid → parent pid for every process now (one pass over /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields start after the last ")"
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first, then theirs)."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def is_lorakit(pid: int) -> bool:
    """Whether ``pid`` runs lorakit (its command line says so); False when it is gone."""
    try:
        return b"lorakit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its parent's wait is missing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _send(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def signal_descendants(pid: int, signum: int, *, only_lorakit: bool = True) -> list[int]:
    """Send ``signum`` to every descendant of ``pid`` (by default only lorakit processes: a rank's own
    helpers, compilers say, have no handler for a stop signal and would die of it). Returns who got it."""
    targets = [p for p in descendants(pid) if not only_lorakit or is_lorakit(p)]
    for target in targets:
        _send(target, signum)
    return targets


def kill_tree(pid: int, signum: int = signal.SIGKILL) -> list[int]:
    """Stop ``pid`` and all its descendants, then send them ``signum``; returns the pids signalled.

    For SIGKILL the tree is frozen first, so no member forks or is reparented before it is killed.
    """
    tree = [pid]
    if signum == signal.SIGKILL:
        for _ in range(50):  # each round stops what the last one found; a stopped process cannot fork
            for member in tree:
                _send(member, signal.SIGSTOP)
            grown = [p for p in descendants(pid) if p not in tree]
            # orphans of a member that died meanwhile are reparented: take whatever descends from the tree
            grown += [p for m in tree[1:] for p in descendants(m) if p not in tree and p not in grown]
            if not grown:
                break
            tree += grown
    else:
        tree += descendants(pid)
    for member in tree:
        _send(member, signum)
    return tree


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` is alive; returns those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so a killed
    launcher or Ray actor leaves no rank behind. A no-op elsewhere."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(name, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
