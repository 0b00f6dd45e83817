"""A job's whole process tree: find it, signal it, kill it (Linux /proc; torch-free).

A job is not one process: ``lorakit train --nproc N`` starts torchrun, which starts N ranks, and both
torchrun and the ranks start sessions of their own, so a process-group kill (``killpg``) misses them.
The tree is followed through parent links instead. To kill it, the tree is first frozen (SIGSTOP, top
down, until no new member appears: a stopped process cannot fork), then killed: nothing respawns in
between, and nothing is reparented away before it is found.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

#: set by the launcher of a process tree (``lorakit train --nproc``) for its grandchildren, the ranks: a rank
#: whose grandparent is no longer that pid was orphaned before it could ask to die with its parent
LAUNCHER_ENV = "LORAKIT_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1


def _parents() -> dict[int, int]:
    """pid → parent pid for every process now (one pass over /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        ppid = parent_of(int(entry.name))
        if ppid is not None:
            parents[int(entry.name)] = ppid
    return parents


def parent_of(pid: int) -> int | None:
    """The parent of ``pid``, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # the command name may hold spaces and parentheses: the fields start after the last ")"
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _below(roots: Iterable[int], parents: dict[int, int]) -> list[int]:
    """Every descendant of any of ``roots`` in one snapshot (children before their own children)."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    seen = set(roots)
    found: list[int] = []
    todo = list(seen)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                todo.append(child)
    return found


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, whatever its session or process group."""
    return _below([pid], _parents())


def cmdline(pid: int) -> bytes:
    """The command line of ``pid`` (arguments separated by NUL); empty when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def is_lorakit(pid: int) -> bool:
    """Whether ``pid`` runs lorakit (its command line says so); False when it is gone."""
    return b"lorakit" in cmdline(pid)


def alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its parent's wait is missing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def catches(pid: int, signum: int) -> bool:
    """Whether ``pid`` has a handler for ``signum`` now (``SigCgt`` in /proc/PID/status): a Python process
    that has not installed its handler yet would die of the signal's default action instead."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _send(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def signal_descendants(
    pid: int, signum: int, *, only: Callable[[int], bool] | None = is_lorakit
) -> list[int]:
    """Send ``signum`` to every descendant of ``pid`` that ``only`` accepts (by default lorakit processes:
    a rank's own helpers, compilers say, have no handler for a stop signal and would die of it).
    Returns who got it."""
    targets = [p for p in descendants(pid) if only is None or only(p)]
    return [target for target in targets if _send(target, signum)]


def kill_tree(pid: int, signum: int = signal.SIGKILL) -> list[int]:
    """Send ``signum`` to ``pid`` and all its descendants; returns the pids signalled.

    For SIGKILL the tree is frozen first, round after round until a round finds nobody new, so no member
    forks or is reparented out of reach before it is killed.
    """
    tree = [pid]
    if signum == signal.SIGKILL:
        for _ in range(100):
            for member in tree:
                _send(member, signal.SIGSTOP)
            grown = _below(tree, _parents())  # below any member: a child whose parent died meanwhile too
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


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # libc is in the process's global namespace
    except (OSError, AttributeError):
        return None


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``); a no-op
    elsewhere. Called first thing in a torchrun rank, so a rank never outlives its torchrun. A rank whose
    torchrun died before this call (the launcher set ``LORAKIT_LAUNCHER_PID``) is an orphan already and
    kills itself."""
    prctl = _prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    launcher = os.environ.get(LAUNCHER_ENV, "")
    if launcher.isdigit() and parent_of(os.getppid()) != int(launcher):
        os.kill(os.getpid(), signal.SIGKILL)


def pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets SIGKILL when this process dies, so a killed
    launcher or Ray actor leaves nothing training unowned. None where Linux's prctl is missing.

    Everything is resolved here, in the parent: between fork and exec the child may only do little.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    getppid, kill, getpid, sigkill = os.getppid, os.kill, os.getpid, int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill)
        if getppid() != parent:  # the parent died before the prctl took hold: no signal will come
            kill(getpid(), sigkill)

    return preexec
