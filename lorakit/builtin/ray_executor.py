"""Executor ``ray``: each job runs on a Ray cluster, in an actor that holds the resources the job needs.

``lorakit run-parallel --executor ray [--executor-option address=ADDRESS]``. Ray decides where a job runs: the actor asks
for one CPU and the job's GPUs (``resources.gpus`` when the cluster has GPUs), so Ray queues jobs until a node
has room and sets ``CUDA_VISIBLE_DEVICES`` for the GPUs it grants. The scheduler still decides the *order*
(priority, FIFO within a level) and preempts through the actor, which delivers the signal to the job's
process. Every node must see the same outputs folder and the same Python environment (a shared filesystem,
as usual for Ray jobs that write files).

An actor that dies (``ray.kill``, its node lost) takes its job's whole process tree with it (each process
dies with its parent), and the scheduler sees the job end like a killed process, with a one-line reason
in the job's log.

Ray is optional: ``pip install 'lorakit[ray]'``.
"""

from __future__ import annotations

import contextlib
import os
import signal as signals
import subprocess
import time
from typing import Any

from ..conventions import PREEMPTED_EXIT
from ..errors import PluginError
from ..hookspecs import hookimpl
from ..proctree import kill_tree, pdeathsig_preexec
from ..specs import ExecutorSpec


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PluginError("the ray executor needs Ray: pip install 'lorakit[ray]'") from None
    return ray


class _JobProcess:
    """Runs inside a Ray actor: starts the job's command on that node and answers for it."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None, log_path: str):
        env = dict(env)
        # Ray sets CUDA_VISIBLE_DEVICES for the GPUs it granted this actor; the scheduler's value is local
        env.pop("CUDA_VISIBLE_DEVICES", None)
        log = open(log_path, "ab")  # noqa: SIM115 - owned by the process below
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # a dead actor (ray.kill, a lost worker) takes its job with it: nothing trains unowned
            preexec_fn=pdeathsig_preexec(),
        )
        log.close()

    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def signal(self, signum: int) -> None:
        if self.process.poll() is not None:
            return
        if signum == signals.SIGKILL:
            kill_tree(self.process.pid, signum)  # torchrun's ranks too, whatever their sessions
        else:
            self.process.send_signal(signum)


class RayHandle:
    """A job submitted to Ray. Until Ray places its actor the job is pending: poll() says it is running."""

    def __init__(self, ray: Any, actor: Any, ready: Any, log_path: str):
        self._ray = ray
        self._actor = actor
        self._ready = ready  # resolves when the actor (and so the job's process) has started
        self._log_path = log_path
        self._code: int | None = None

    @property
    def pid(self) -> int | None:
        return None  # the process may live on another node

    def _started(self) -> bool:
        done, _ = self._ray.wait([self._ready], timeout=0)
        return bool(done)

    def _lost(self, exc: BaseException) -> None:
        """The actor died (killed, its node lost) and its job with it: end like a killed process, and say
        why in the job's log, where the scheduler reads a failure's reason."""
        self._code = -signals.SIGKILL
        _say(self._log_path, f"Error: the Ray actor running this job died: {_first_line(exc)}")

    def poll(self) -> int | None:
        if self._code is not None:
            return self._code
        if not self._started():
            return None
        try:
            code = self._ray.get(self._actor.poll.remote())
        except self._ray.exceptions.RayError as exc:  # RayActorError, ActorDiedError, ...
            self._lost(exc)
            return self._code
        if code is not None:
            self._code = code
            self._ray.kill(self._actor)
        return code

    def signal(self, signum: int) -> None:
        if self._code is not None:
            return
        if not self._started():
            # never started: nothing to checkpoint. SIGUSR1/SIGTERM mean "yield", as a preempted job would.
            self._ray.kill(self._actor)
            self._code = -signals.SIGKILL if signum == signals.SIGKILL else PREEMPTED_EXIT
            return
        try:
            self._ray.get(self._actor.signal.remote(signum))
        except self._ray.exceptions.RayError as exc:
            self._lost(exc)

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None or (deadline is not None and time.monotonic() >= deadline):
                return code
            time.sleep(0.2)


class EndedHandle:
    """A job that ended before it started (the cluster can never hold it)."""

    def __init__(self, code: int):
        self._code = code

    @property
    def pid(self) -> int | None:
        return None

    def poll(self) -> int | None:
        return self._code

    def signal(self, signum: int) -> None:
        pass

    def wait(self, timeout: float | None = None) -> int | None:
        return self._code


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _say(log_path: str, line: str) -> None:
    with contextlib.suppress(OSError), open(log_path, "a", encoding="utf-8") as log:
        log.write(line + "\n")


def jobs_at_once(resources: dict[str, float], gpus_per_job: int | None) -> int:
    """How many jobs a cluster with ``resources`` runs at once: one CPU each, and on a cluster with GPUs
    ``gpus_per_job`` GPUs each (default 1): on a GPU cluster the GPUs run out first."""
    jobs = int(resources.get("CPU", 1))
    gpus = resources.get("GPU", 0)
    per_job = 1 if gpus_per_job is None else gpus_per_job
    if gpus and per_job > 0:
        jobs = min(jobs, int(gpus // per_job))
    return max(1, jobs)


def _count(name: str, value: Any) -> int | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        raise PluginError(f"the ray executor's {name} must be a whole number, got {value!r}") from None


class RayExecutor:
    """Starts each job as a Ray actor. Options: ``address`` (None: a local Ray instance), ``num_cpus`` and
    ``num_gpus`` for a local instance, ``gpus_per_job`` (default: the job's own request, when the cluster
    has GPUs)."""

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        **options: Any,
    ):
        unknown = set(options) - {"gpus_per_job"}
        if unknown:
            raise PluginError(
                f"the ray executor takes address, num_cpus, num_gpus, gpus_per_job; got {sorted(unknown)}"
            )
        # --executor-option values arrive as strings
        num_cpus, num_gpus = _count("num_cpus", num_cpus), _count("num_gpus", num_gpus)
        if "gpus_per_job" in options:
            options["gpus_per_job"] = _count("gpus_per_job", options["gpus_per_job"])
        ray = _ray()
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:  # a local instance: what it may use (Ray counts the machine's own by default)
                kwargs.update({k: v for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus)) if v})
            ray.init(**kwargs)
        self._cluster_gpus = ray.cluster_resources().get("GPU", 0)
        self._gpus_per_job = options.get("gpus_per_job")
        self._actor_class = ray.remote(_JobProcess)

    def capacity(self) -> int:
        """Jobs the cluster can run at once: the scheduler keeps this many outstanding (see
        :func:`jobs_at_once`)."""
        return jobs_at_once(self._ray.cluster_resources(), self._gpus_per_job)

    def start(self, spec: Any) -> RayHandle | EndedHandle:
        gpus = self._gpus_per_job if self._gpus_per_job is not None else getattr(spec, "gpus", 1)
        if not self._cluster_gpus:
            gpus = 0
        total = int(self._ray.cluster_resources().get("GPU", 0))
        if gpus > total:  # Ray would keep the actor pending for ever
            _say(spec.log_path, f"Error: the job needs {gpus} GPUs; the Ray cluster has {total}")
            return EndedHandle(2)
        actor = self._actor_class.options(num_cpus=1, num_gpus=gpus).remote(
            list(spec.argv), dict(spec.env), spec.cwd, spec.log_path
        )
        return RayHandle(self._ray, actor, actor.pid.remote(), spec.log_path)

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


RAY = ExecutorSpec(
    name="ray",
    create=RayExecutor,
    options=("address", "num_cpus", "num_gpus", "gpus_per_job"),
    extra="lorakit[ray]",
    places_jobs=True,
    description="Ray actors on a local instance or a cluster (--executor-option address=HOST:PORT); Ray places the jobs",
)


@hookimpl
def lorakit_register_executors(register):
    register(RAY)
