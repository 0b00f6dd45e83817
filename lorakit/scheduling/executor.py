"""The executor interface: how the scheduler starts a job and talks to it afterwards.

An executor plugin registers an :class:`lorakit.specs.ExecutorSpec` whose ``create(**options)`` returns
an object with this interface (:class:`Executor`)::

    executor.start(spec: LaunchSpec) -> JobHandle     start one job; do not wait for it
    executor.close() -> None                          the scheduler is done with the executor

    handle.poll() -> int | None     None while running; then the exit status (negative: killed by signal -n)
    handle.signal(signum) -> None   deliver a signal (SIGUSR1: checkpoint and exit 75; SIGTERM: same;
                                    SIGKILL: now); a no-op once the job has ended
    handle.wait(timeout) -> int | None   poll() after at most ``timeout`` seconds (None: until it ends)
    handle.pid -> int | None        a local process id for display, or None

The job carries everything an executor needs and nothing about lorakit's internals: the command, the
environment to set on top of the executor's own, the working folder, the log file, and the resources the
scheduler gave it (GPU indices, memory reserved per GPU). The built-in ``local`` executor
(:mod:`lorakit.builtin.executors`) runs it as a child process; a cluster executor (Ray) would run the same
command on a node holding those resources.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from ..plugins import Plugins


@attrs.define(kw_only=True, frozen=True)
class LaunchSpec:
    """One job, as an executor sees it."""

    job_id: int
    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None
    log_path: str
    devices: tuple[int, ...] = ()
    memory_mb: int | None = None
    gpus: int = 1  # what the job asks for (resources.gpus); executors that place jobs themselves use it


class JobHandle(Protocol):
    """A started job."""

    @property
    def pid(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def signal(self, signum: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...


class Executor(Protocol):
    """Starts jobs (see the module docstring)."""

    def start(self, spec: LaunchSpec) -> JobHandle: ...

    def close(self) -> None: ...


def create_executor(name: str, plugins: Plugins, **options: Any) -> Executor:
    """The executor registered as ``name`` (``local`` is built in), created with ``options``."""
    spec = plugins.executors().get(name)
    return spec.create(**options)
