"""Built-in executor ``local``: each job is a child process of the scheduler on this machine.

The interface every executor implements is described in :mod:`lorakit.scheduling.executor`.
"""

from __future__ import annotations

import os
import signal as signals
import subprocess
from typing import Any

from ..hookspecs import hookimpl
from ..proctree import kill_tree
from ..specs import ExecutorSpec


class LocalHandle:
    """A job running as a local child process."""

    def __init__(self, process: subprocess.Popen[bytes], log: Any):
        self._process = process
        self._log = log

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def poll(self) -> int | None:
        code = self._process.poll()
        if code is not None and not self._log.closed:
            self._log.close()
        return code

    def signal(self, signum: int) -> None:
        if self._process.poll() is not None:
            return
        try:
            if signum == signals.SIGKILL:
                # the whole tree: torchrun and its ranks start sessions of their own, killpg misses them
                kill_tree(self._process.pid, signum)
            else:
                # the job's own process decides what its children hear (torchrun forwards SIGTERM)
                self._process.send_signal(signum)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.poll()


class LocalExecutor:
    """Runs each job as a child process with the job's environment on top of the scheduler's.

    Jobs start in a new session, so a Ctrl-C at the scheduler's terminal reaches the scheduler alone;
    the scheduler then asks each job to checkpoint, in order.
    """

    def __init__(self, **options: Any):
        if options:
            raise TypeError(f"the local executor takes no options, got {sorted(options)}")

    def start(self, spec: Any) -> LocalHandle:
        log = open(spec.log_path, "ab")  # noqa: SIM115 - the handle closes it when the job ends
        try:
            process = subprocess.Popen(
                list(spec.argv),
                cwd=spec.cwd,
                env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        return LocalHandle(process, log)

    def close(self) -> None:
        pass


LOCAL = ExecutorSpec(
    name="local",
    create=LocalExecutor,
    description="child processes on this machine, CUDA_VISIBLE_DEVICES set per job",
)


@hookimpl
def lorakit_register_executors(register):
    register(LOCAL)
