"""The scheduler: one long-running loop per outputs folder that runs the queue.

Each turn of the loop (every ``poll_s`` seconds): reap jobs that ended and record their outcome; pass on
cancel requests (SIGTERM); then walk the pending jobs in priority order (high > medium > low, FIFO within
a level) and start each one that fits. With GPUs, "fits" means memory: the job's estimate plus a margin
on GPUs of the pool (:mod:`lorakit.scheduling.placement`). Without GPUs, jobs run on CPU,
``max_parallel`` at a time. A job that does not fit while lower-priority jobs hold the room it needs
makes them yield: SIGUSR1, the trainer checkpoints at its next step boundary and exits 75, the yielding
job goes back to the queue as ``preempted`` and later resumes with ``--resume``. While victims are
checkpointing, nothing else starts, so the room goes to the job that asked for it.

SIGINT or SIGTERM to the scheduler asks every running job to checkpoint, waits for them (a second Ctrl-C
kills them; they resume from their last checkpoint), marks them ``preempted`` and returns 130.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ..conventions import INTERRUPTED_EXIT
from ..errors import LorakitError
from ..plugins import Plugins, get_plugins
from .display import Board, job_row
from .executor import Executor, JobHandle, LaunchSpec, create_executor
from .inventory import detect_gpus, pool_states
from .launch import job_command, job_env, move_log_to_folder, side_log, start_flags
from .lock import SchedulerLock
from .outcome import classify, record_run_notes
from .placement import (
    GpuState,
    RunningJob,
    eligible,
    place,
    plan_preemption,
    plan_slot_preemption,
    reservation_mb,
)
from .queue import ACTIVE_STATES, PENDING_STATES, Job, JobQueue, QueueError
from .recover import preempt_signal, recover_orphans


@attrs.define(kw_only=True)
class Active:
    """A job this scheduler started and has not reaped yet."""

    job: Job
    handle: JobHandle
    devices: tuple[int, ...]
    reserved_mb: int
    started_at: float
    log_path: Path
    stop_reason: str | None = None

    def view(self) -> RunningJob:
        return RunningJob(
            job_id=self.job.id,
            rank=self.job.rank,
            devices=self.devices,
            reserved_mb=self.reserved_mb,
            started_at=self.started_at,
            yielding=self.stop_reason is not None,
        )


class Scheduler:
    """Runs the queue of ``outputs`` (see the module docstring). ``run()`` returns the exit status."""

    def __init__(
        self,
        outputs: str | Path,
        *,
        plugins: Plugins | None = None,
        executor: str = "local",
        executor_options: dict[str, Any] | None = None,
        gpu_pool: tuple[int | str, ...] | None = None,
        max_parallel: int | None = None,
        exit_when_done: bool = False,
        poll_s: float = 1.0,
        board: Board | None = None,
    ):
        self.outputs = Path(outputs)
        self.queue = JobQueue(self.outputs)
        self.plugins = plugins
        self.executor_name = executor
        self.executor_options = executor_options or {}
        self.gpu_pool = gpu_pool
        self.max_parallel = max_parallel
        self.exit_when_done = exit_when_done
        self.poll_s = poll_s
        self.board = board or Board()
        self.active: dict[int, Active] = {}
        self.seen: set[int] = set()
        self.interrupts = 0
        self.cpu_mode = True
        self.slot_cap = 1
        self._inventory_problem: str | None = None
        self._executor: Executor | None = None

    # ---- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Hold the outputs folder's lock and run the queue until done (``exit_when_done``) or stopped."""
        lock = SchedulerLock(self.outputs)
        lock.acquire()
        previous = self._install_signals()
        try:
            self.plugins = self.plugins or get_plugins()
            self._executor = create_executor(self.executor_name, self.plugins, **self.executor_options)
            self._announce()
            self.seen.update(recover_orphans(self.queue, self.outputs, self.board.event))
            while True:
                self._reap()
                if self.interrupts:
                    return self._drain()
                self._pass_on_cancels()
                self._schedule()
                self.board.refresh(self.rows)
                if self.exit_when_done and not self.active and not self.queue.pending():
                    self.board.refresh(self.rows, every_s=0)
                    return 0
                self._sleep(self.poll_s)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._executor is not None:
                self._executor.close()
            lock.release()
            self.board.close()

    def _install_signals(self) -> dict[int, Any]:
        def interrupted(signum: int, frame: Any) -> None:
            self.interrupts += 1

        previous: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, interrupted)
        return previous

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.interrupts and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def _announce(self) -> None:
        assert self.plugins is not None
        gpus = [] if self.gpu_pool == () else detect_gpus(self.plugins)
        states = pool_states(gpus, self.gpu_pool) if gpus or self.gpu_pool else []
        self.cpu_mode = not states
        spec = self.plugins.executors().get(self.executor_name)
        if spec.places_jobs:
            # the executor's cluster decides where jobs run: keep as many outstanding as it can hold
            self.cpu_mode = True
            capacity = getattr(self._executor, "capacity", lambda: None)()
            self.slot_cap = self.max_parallel or capacity or 1
            where = f"executor {spec.name} places the jobs: {self.slot_cap} at a time"
        elif self.cpu_mode:
            self.slot_cap = self.max_parallel or 1
            where = f"no GPU in the pool: CPU jobs, {self.slot_cap} at a time"
        else:
            names = {d.index: d.name for d in gpus}
            one = {s.index: ", one job at a time" if s.max_jobs == 1 else "" for s in states}
            where = "GPUs " + ", ".join(
                f"{s.index} ({names[s.index]}, {s.total_mb} MiB{one[s.index]})" for s in states
            )
            if self.max_parallel:
                where += f", at most {self.max_parallel} jobs"
        self.board.event(f"scheduler for {self.outputs} (pid {os.getpid()}): {where}")

    def rows(self) -> list[dict[str, Any]]:
        """The board's rows: jobs waiting or running, and those this scheduler saw end."""
        jobs = [job for job in self.queue.jobs() if job.state in ACTIVE_STATES or job.id in self.seen]
        return [job_row(job, self.outputs) for job in jobs]

    # ---- starting ---------------------------------------------------------------------------------

    def _schedule(self) -> None:
        pending = self.queue.pending()
        for job in pending:
            if job.id not in self.seen:
                self.seen.add(job.id)
                self.board.event(f"job {job.id} {job.exp_id} ({job.priority}): {job.state}")
        if not pending:
            return
        if self.cpu_mode:
            self._schedule_cpu(pending)
        else:
            self._schedule_gpus(pending)

    def _views(self) -> list[RunningJob]:
        return [active.view() for active in self.active.values()]

    def _schedule_cpu(self, pending: list[Job]) -> None:
        cap = self.slot_cap
        for job in pending:
            if len(self.active) < cap:
                self._start(job, (), 0)
                continue
            victims = plan_slot_preemption(job.rank, self._views(), cap)
            if victims:
                self._preempt(victims, job)
            return  # every job needs the same slot: those behind the head wait too

    def _schedule_gpus(self, pending: list[Job]) -> None:
        assert self.plugins is not None
        try:
            gpus = pool_states(detect_gpus(self.plugins), self.gpu_pool)
        except LorakitError as exc:  # a GPU of the pool vanished: keep the running jobs, place nothing
            if str(exc) != self._inventory_problem:
                self._inventory_problem = str(exc)
                self.board.event(f"cannot place jobs: {exc}")
            return
        self._inventory_problem = None
        for job in pending:
            estimate = self._estimate(job)
            if estimate is None:
                continue
            need = reservation_mb(estimate)
            totals = sorted((g.total_mb for g in eligible(gpus, job.gpus)), reverse=True)
            if job.gpus > len(totals) or need > totals[job.gpus - 1]:
                self._fail_unplaceable(job, need, totals, mig=any(g.mig for g in gpus))
                continue
            now = time.time()
            full = self.max_parallel is not None and len(self.active) >= self.max_parallel
            devices = None if full else place(need, job.gpus, gpus, self._views(), now=now)
            if devices is not None:
                self._start(job, devices, need, gpus)
                continue
            victims = plan_preemption(job.rank, need, job.gpus, gpus, self._views(), now=now)
            if full and victims == [] and self.max_parallel is not None:
                victims = plan_slot_preemption(job.rank, self._views(), self.max_parallel)
            if victims is None:
                continue  # no lower-priority room to take: let smaller jobs behind it use what is free
            if victims:
                self._preempt(victims, job)
            return  # room is being made for this job: nothing behind it may take it

    def _estimate(self, job: Job) -> int | None:
        if job.memory_mb is not None:
            return job.memory_mb
        if job.estimate_mb is not None:
            return job.estimate_mb
        from ..config.schema import load_config
        from .estimate import estimate_memory

        assert self.plugins is not None
        try:
            cfg, _ = load_config(job.config_path, job.all_overrides)
            estimate = estimate_memory(cfg, plugins=self.plugins, outputs=self.outputs)
        except LorakitError as exc:
            self._end_without_running(job, "failed", f"cannot estimate its memory: {exc}")
            return None
        self.queue.update(job.id, estimate_mb=estimate.total_mb, estimate_source=estimate.source)
        self.board.event(f"job {job.id} {job.exp_id}: estimated {estimate.summary()}")
        return estimate.total_mb

    def _fail_unplaceable(self, job: Job, need: int, totals: list[int], *, mig: bool = False) -> None:
        if job.gpus > len(totals):
            why = f"needs {job.gpus} GPUs; the pool has {len(totals)}"
            why += " (MIG slices take one-GPU jobs only)" if mig else ""
        else:
            why = f"needs {need} MiB per GPU (estimate + margin); the largest GPU in the pool has {totals[0]} MiB"
        self._end_without_running(job, "failed", why + " (set resources.memory_mb to override the estimate)")

    def _end_without_running(self, job: Job, state: str, note: str) -> None:
        try:
            self.queue.update(job.id, expect=PENDING_STATES, state=state, ended_at=time.time())
        except QueueError:
            return
        self.queue.add_note(job.id, note)
        self.seen.add(job.id)
        self.board.event(f"job {job.id} {job.exp_id}: {state}: {note}")

    def _start(self, job: Job, devices: tuple[int, ...], need: int, gpus: Sequence[GpuState] = ()) -> None:
        flags = start_flags(job, self.outputs)
        if flags is None:
            self._end_without_running(job, "done", "its folder already holds the completed run")
            return
        labels = {gpu.index: gpu.label for gpu in gpus if gpu.label}
        label = ",".join(labels.get(i, f"GPU-{i}") for i in devices) or "cpu"
        env = job_env(devices, job, {gpu.index: gpu.uuid for gpu in gpus})
        log = side_log(self.outputs, job)
        argv = job_command(job, self.outputs, flags)
        now = time.time()
        try:
            job = self.queue.update(
                job.id,
                expect=PENDING_STATES,
                state="running",
                device=label,
                reserved_mb=need or None,
                attempts=job.attempts + 1,
                started_at=now,
                exit_code=None,
                log_path=str(log),
            )
        except QueueError:
            return  # cancelled between the read and now
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"=== lorakit scheduler: job {job.id} attempt {job.attempts} on {label}")
            fh.write(f" (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})\n" if devices else "\n")
            fh.write(f"=== {shlex.join(argv)}\n")
        spec = LaunchSpec(
            job_id=job.id,
            name=job.exp_id,
            argv=argv,
            env=env,
            cwd=None,
            log_path=str(log),
            devices=devices,
            memory_mb=need or None,
            gpus=job.gpus,
        )
        assert self._executor is not None
        try:
            handle = self._executor.start(spec)
        except OSError as exc:
            self.queue.update(job.id, state="failed", ended_at=time.time())
            self.queue.add_note(job.id, f"could not start: {exc}")
            self.board.event(f"job {job.id} {job.exp_id}: failed to start: {exc}")
            return
        self.queue.update(job.id, pid=handle.pid)
        self.active[job.id] = Active(
            job=job, handle=handle, devices=devices, reserved_mb=need, started_at=now, log_path=log
        )
        self.seen.add(job.id)
        how = {"--resume": " (resuming)", "--force": " (fresh start, --force)"}.get(
            flags[0] if flags else "", ""
        )
        reserved = f", {need} MiB reserved" if devices else ""
        self.board.event(f"job {job.id} {job.exp_id} ({job.priority}): running on {label}{reserved}{how}")

    def _preempt(self, victims: list[int], job: Job) -> None:
        for victim in victims:
            active = self.active[victim]
            reason = f"preempted by job {job.id} {job.exp_id} ({job.priority})"
            self._stop(active, reason, preempt_signal(active.job))
            self.board.event(
                f"job {victim} {active.job.exp_id} ({active.job.priority}): asked to checkpoint and "
                f"yield to job {job.id} {job.exp_id} ({job.priority})"
            )

    def _stop(self, active: Active, reason: str, signum: int) -> None:
        if active.stop_reason is None:
            active.stop_reason = reason
            active.handle.signal(signum)

    def _pass_on_cancels(self) -> None:
        if not self.active:
            return
        for job in self.queue.jobs(["running"]):
            active = self.active.get(job.id)
            if active is not None and job.cancel_requested and active.stop_reason is None:
                self._stop(active, "cancelled", signal.SIGTERM)
                self.board.event(f"job {job.id} {job.exp_id}: cancel requested: asked to checkpoint and stop")

    # ---- ending -----------------------------------------------------------------------------------

    def _reap(self) -> None:
        for job_id, active in list(self.active.items()):
            code = active.handle.poll()
            if code is not None:
                del self.active[job_id]
                self._finish(active, code)

    def _finish(self, active: Active, code: int) -> None:
        job = self.queue.get(active.job.id)
        outcome = classify(
            job, code, outputs=self.outputs, stop_reason=active.stop_reason, log_path=str(active.log_path)
        )
        fields: dict[str, Any] = {"state": outcome.state, "exit_code": code, "ended_at": time.time()}
        fields["pid"] = None
        if outcome.start_mode:
            fields["start_mode"] = outcome.start_mode
        if outcome.extra_overrides is not None:
            fields.update(extra_overrides=outcome.extra_overrides, oom_retries=job.oom_retries + 1)
            fields.update(estimate_mb=None, estimate_source=None)
        if outcome.state == "preempted":
            fields["preemptions"] = job.preemptions + 1
        job = self.queue.update(job.id, **fields)
        if outcome.note:
            job = self.queue.add_note(job.id, outcome.note, for_run=outcome.run_note)
        if outcome.start_mode != "force":  # a --force start would wipe the folder and the log in it
            log = move_log_to_folder(self.outputs, job, active.log_path)
            job = self.queue.update(job.id, log_path=str(log))
            record_run_notes(self.outputs, job)
        row = job_row(job, self.outputs)
        details = [f"exit {code}"] if outcome.state != "failed" else []  # a failure's note says it
        if row["best"] is not None:
            details.append(f"best {row['best_metric']} {row['best']:.4f}")
        said = f" ({', '.join(details)})" if details else ""
        note = f": {outcome.note}" if outcome.note else ""
        self.board.event(f"job {job.id} {job.exp_id}: {outcome.state}{said}{note}")

    def _drain(self) -> int:
        if self.active:
            self.board.event(
                f"interrupted: asking {len(self.active)} running job(s) to checkpoint "
                "(interrupt again to kill them; they then resume from their last checkpoint)"
            )
        for active in self.active.values():
            self._stop(active, "interrupted: the scheduler stopped", preempt_signal(active.job))
        killed = False
        while self.active:
            self._reap()
            if self.interrupts >= 2 and not killed and self.active:
                killed = True
                self.board.event(f"killing {len(self.active)} job(s)")
                for active in self.active.values():
                    active.handle.signal(signal.SIGKILL)
            time.sleep(0.05)
        self.board.refresh(self.rows, every_s=0)
        self.board.event("scheduler stopped; `lorakit scheduler` resumes the preempted jobs")
        return INTERRUPTED_EXIT
