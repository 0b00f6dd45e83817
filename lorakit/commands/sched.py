"""``lorakit devices``, ``estimate``, ``submit``, ``queue``, ``cancel``, ``scheduler`` and ``run-parallel``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click


def _outputs_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--outputs",
        type=click.Path(file_okay=False),
        default=None,
        help="Outputs folder; holds the queue (default: $LORAKIT_OUTPUTS, else ./outputs).",
    )(func)


def _set_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (TOML value)."
    )(func)


def _pool_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--poll-interval",
        type=click.FloatRange(min=0.05),
        default=1.0,
        show_default=True,
        help="Seconds between looks at the queue and the jobs.",
    )(func)
    func = click.option(
        "--executor",
        default="local",
        show_default=True,
        help="Executor plugin that runs the jobs: local, ray, ... (lorakit plugins lists them).",
    )(func)
    func = click.option(
        "--executor-option",
        "executor_option",
        multiple=True,
        metavar="KEY=VALUE",
        help="An option of the executor plugin (repeatable), e.g. address=HOST:PORT for ray.",
    )(func)
    func = click.option(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="Same as --executor-option address=ADDRESS: with --executor ray, the cluster to join "
        "(default: start a local Ray instance).",
    )(func)
    func = click.option(
        "--max-parallel",
        type=click.IntRange(min=1),
        default=None,
        help="At most this many jobs at once (CPU only: default 1; with GPUs: as many as fit).",
    )(func)
    return click.option(
        "--gpu-pool",
        metavar="0,1",
        default=None,
        help="GPUs jobs may use, by index or UUID (prefix) as `lorakit devices` lists them "
        "(default: every GPU found; 'cpu': none).",
    )(func)


def executor_options(executor: str, pairs: tuple[str, ...], address: str | None) -> dict[str, str]:
    """``--executor-option KEY=VALUE`` pairs (and ``--ray-address``, the ``address`` option) as the
    keyword arguments of the executor plugin's ``create``; a key it does not take is a usage error."""
    import inspect

    from ..errors import LorakitError
    from ..plugins import get_plugins

    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LorakitError(f"--executor-option {pair!r}: expected KEY=VALUE")
        options[key.strip()] = value
    if address:
        options["address"] = address
    if not options:
        return options
    spec = get_plugins().executors().get(executor)
    known = spec.options
    if known is None:  # undeclared: the named keyword parameters of create
        params = inspect.signature(spec.create).parameters.values()
        known = tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    for key in options:
        if key not in known:
            flag = "--ray-address" if key == "address" and address else f"--executor-option {key}"
            takes = ", ".join(known) or "none"
            raise LorakitError(
                f"{flag}: executor {executor!r} takes no option {key!r} (its options: {takes})"
            )
    return options


def _scheduler(
    root: Any,
    pool: Any,
    max_parallel: int | None,
    executor: str,
    options: dict[str, str],
    poll_interval: float,
    *,
    exit_when_done: bool,
) -> Any:
    """The Scheduler both `scheduler` and `run-parallel` run, from their shared options."""
    from ..scheduling.scheduler import Scheduler

    return Scheduler(
        root,
        executor=executor,
        executor_options=options,
        gpu_pool=pool,
        max_parallel=max_parallel,
        exit_when_done=exit_when_done,
        poll_s=poll_interval,
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def devices(as_json: bool) -> None:
    """List the GPUs jobs may use, CUDA_VISIBLE_DEVICES applied (an empty list: jobs run on CPU)."""
    import os

    import attrs

    from ..plugins import get_plugins
    from ..scheduling.inventory import CVD, detect_gpus, visible_devices

    every = detect_gpus(get_plugins(), environ={})
    found = visible_devices(every, os.environ.get(CVD))
    if as_json:
        click.echo(json.dumps([attrs.asdict(d) for d in found], indent=2))
        return
    if not found:
        click.echo("no GPU found: jobs run on CPU" + _no_gpu_reason(bool(every), os.environ.get(CVD)))
        return
    from tabulate import tabulate

    rows = [
        [
            d.index,
            d.name,
            d.uuid or "",
            "" if d.parent_index is None else f"{d.parent_index}/{d.mig_index}",
            d.compute_mode,
            d.total_mb,
            d.used_mb,
            d.free_mb,
            "" if d.utilization is None else d.utilization,
        ]
        for d in found
    ]
    headers = ["index", "name", "uuid", "MIG", "mode", "total MiB", "used MiB", "free MiB", "util %"]
    click.echo(tabulate(rows, headers=headers, tablefmt="simple"))


def _no_gpu_reason(hidden: bool, cuda_visible: str | None) -> str:
    if hidden:
        return f" (CUDA_VISIBLE_DEVICES={cuda_visible!r} hides every GPU)"
    from ..builtin.devices import probe_nvml

    reason = probe_nvml()[1]
    return f" ({reason})" if reason else ""


@click.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@_set_option
@_outputs_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def estimate(config_path: str, overrides: tuple[str, ...], outputs: str | None, as_json: bool) -> None:
    """Print the expected peak GPU memory of CONFIG_PATH's run and its parts."""
    from ..config.schema import load_config
    from ..plugins import get_plugins
    from ..runs.layout import outputs_root
    from ..scheduling.estimate import estimate_memory
    from ..scheduling.placement import margin_mb

    cfg, _ = load_config(config_path, list(overrides))
    result = estimate_memory(cfg, plugins=get_plugins(), outputs=outputs_root(outputs), use_config=False)
    forced = cfg.resources.memory_mb
    used = forced if forced is not None else result.total_mb
    if as_json:
        data = result.to_json()
        data.update(memory_mb=forced, scheduler_uses_mb=used, margin_mb=margin_mb(used))
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    click.echo(f"{cfg.exp_id}: expected peak GPU memory {result.summary()}")
    labels = {
        "frozen_weights": "frozen weights",
        "trainable": "LoRA + heads",
        "activations": "activations",
        "cuda_context": "CUDA context",
    }
    for key, value in result.parts.items():
        click.echo(f"  {labels.get(key, key):<15} {value:>9.1f} MiB   {result.details.get(key, '')}")
    click.echo(f"  {'formula total':<15} {result.formula_mb:>9} MiB")
    if result.calibration is not None:
        runs = ", ".join(result.calibration.runs)
        click.echo(f"  measured on: {runs}")
    if forced is not None:
        click.echo(f"resources.memory_mb = {forced} replaces this estimate in the scheduler")
    click.echo(
        f"the scheduler reserves {used} + margin {margin_mb(used)} = {used + margin_mb(used)} MiB per GPU"
    )


@click.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@_set_option
@click.option(
    "--priority",
    type=click.Choice(["low", "medium", "high"]),
    default=None,
    help="Default: the config's resources.priority.",
)
@click.option("--resume", is_flag=True, help="Continue the experiment's interrupted run.")
@click.option("--force", is_flag=True, help="Replace the experiment's existing folder.")
@_outputs_option
def submit(
    config_path: str,
    overrides: tuple[str, ...],
    priority: str | None,
    resume: bool,
    force: bool,
    outputs: str | None,
) -> None:
    """Add CONFIG_PATH's experiment to the queue of the outputs folder."""
    from ..runs.layout import outputs_root
    from ..scheduling.lock import scheduler_running
    from ..scheduling.queue import JobQueue
    from ..scheduling.submit import submit_config

    root = outputs_root(outputs)
    job = submit_config(JobQueue(root), config_path, overrides, priority=priority, resume=resume, force=force)
    click.echo(f"job {job.id}: {job.exp_id} ({job.priority}) queued in {job_queue_path(root)}")
    if not scheduler_running(root):
        click.echo(
            f"no scheduler is running for {root}; start one: lorakit scheduler --outputs {root}", err=True
        )


def job_queue_path(root: Any) -> str:
    from ..scheduling.queue import DB_FILE

    return str(root / DB_FILE)


@click.command()
@_outputs_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--active", is_flag=True, help="Only queued, running and preempted jobs.")
def queue(outputs: str | None, as_json: bool, active: bool) -> None:
    """List the jobs of the queue: state, device, epoch, best metric, notes."""
    from ..runs.layout import outputs_root
    from ..scheduling.display import job_row, render_table
    from ..scheduling.lock import holder_pid, scheduler_running
    from ..scheduling.queue import ACTIVE_STATES, JobQueue

    root = outputs_root(outputs)
    jobs = JobQueue(root).jobs(ACTIVE_STATES if active else None)
    rows = [job_row(job, root) for job in jobs]
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    click.echo(render_table(rows))
    if scheduler_running(root):
        click.echo(f"scheduler: running (pid {holder_pid(root)})")
    elif any(row["state"] in ACTIVE_STATES for row in rows):
        click.echo(f"scheduler: not running; start one: lorakit scheduler --outputs {root}")


@click.command()
@click.argument("job_id", type=int)
@_outputs_option
def cancel(job_id: int, outputs: str | None) -> None:
    """Cancel JOB_ID: a waiting job at once; a running one checkpoints and stops (SIGTERM)."""
    import os
    import signal
    import time

    from ..runs.layout import outputs_root
    from ..scheduling.lock import scheduler_running
    from ..scheduling.queue import JobQueue

    root = outputs_root(outputs)
    jobs = JobQueue(root)
    job = jobs.cancel(job_id)
    if job.state == "cancelled":
        click.echo(f"job {job.id} {job.exp_id}: cancelled")
        return
    if scheduler_running(root):
        click.echo(f"job {job.id} {job.exp_id}: running; the scheduler asks it to checkpoint and stop")
        return
    # no scheduler: the row is stale; stop the process ourselves if it still runs, and only if that pid
    # still is a lorakit process (a pid is reused: never signal a stranger)
    from ..scheduling.recover import is_training_process

    if job.pid and is_training_process(job.pid):
        try:
            os.kill(job.pid, signal.SIGTERM)  # the job checkpoints; `train --nproc` forwards it to its ranks
        except OSError:
            pass
    jobs.update(job.id, state="cancelled", ended_at=time.time())
    click.echo(f"job {job.id} {job.exp_id}: cancelled (no scheduler was running)")


@click.command()
@click.option("--exit-when-done", is_flag=True, help="Exit once nothing is queued, running or preempted.")
@_pool_options
@_outputs_option
def scheduler(
    exit_when_done: bool,
    gpu_pool: str | None,
    max_parallel: int | None,
    executor: str,
    executor_option: tuple[str, ...],
    ray_address: str | None,
    poll_interval: float,
    outputs: str | None,
) -> None:
    """Run the queue of the outputs folder: place jobs on GPUs (or CPU), preempt, resume, report."""
    from ..runs.layout import outputs_root
    from ..scheduling.inventory import parse_gpu_pool

    code = _scheduler(
        outputs_root(outputs),
        parse_gpu_pool(gpu_pool),
        max_parallel,
        executor,
        executor_options(executor, executor_option, ray_address),
        poll_interval,
        exit_when_done=exit_when_done,
    ).run()
    if code:
        sys.exit(code)


@click.command("run-parallel")
@click.option("--configs", required=True, metavar="GLOB,GLOB", help="Config files: comma-separated globs.")
@_set_option
@click.option("--priority", type=click.Choice(["low", "medium", "high"]), default=None, help="For every job.")
@click.option("--force", is_flag=True, help="Replace existing experiment folders.")
@_pool_options
@_outputs_option
def run_parallel(
    configs: str,
    overrides: tuple[str, ...],
    priority: str | None,
    force: bool,
    gpu_pool: str | None,
    max_parallel: int | None,
    executor: str,
    executor_option: tuple[str, ...],
    ray_address: str | None,
    poll_interval: float,
    outputs: str | None,
) -> None:
    """Queue every config matching --configs and run them all; exit 1 if any failed."""
    from ..plugins import get_plugins
    from ..runs.layout import outputs_root
    from ..scheduling.inventory import parse_gpu_pool
    from ..scheduling.lock import SchedulerRunning, holder_pid, scheduler_running
    from ..scheduling.queue import ACTIVE_STATES, JobQueue
    from ..scheduling.submit import expand_configs, validate_all

    root = outputs_root(outputs)
    pool = parse_gpu_pool(gpu_pool)
    get_plugins().executors().get(executor)  # an unknown executor fails before anything is queued
    options = executor_options(executor, executor_option, ray_address)
    if scheduler_running(root):
        raise SchedulerRunning(
            f"a scheduler is already running for {root} (pid {holder_pid(root)}); "
            "add these configs to it with `lorakit submit`"
        )
    paths = expand_configs(configs)
    jobs = JobQueue(root)
    waiting = {job.exp_id: job for job in jobs.jobs(ACTIVE_STATES)}
    by_exp = validate_all(paths, overrides, root, force=force, in_queue=frozenset(waiting))
    ids = _queue_all(jobs, by_exp, waiting, overrides, priority=priority, force=force)
    click.echo(f"{len(ids)} job(s) in the queue; running them")
    code = _scheduler(root, pool, max_parallel, executor, options, poll_interval, exit_when_done=True).run()
    _summarise(jobs, ids, root, code)


def _queue_all(
    jobs: Any,
    by_exp: dict[str, Any],
    waiting: dict[str, Any],
    overrides: tuple[str, ...],
    *,
    priority: str | None,
    force: bool,
) -> list[int]:
    """Queue each experiment as one batch (one already waiting in the queue runs as it is); their job ids."""
    import uuid

    from ..scheduling.submit import submit_config

    batch = uuid.uuid4().hex[:12]
    ids = []
    for exp_id, path in by_exp.items():
        if exp_id in waiting:
            old = waiting[exp_id]
            click.echo(
                f"job {old.id}: {exp_id} is already in the queue ({old.state}); it runs with the others"
            )
            ids.append(old.id)
            continue
        job = submit_config(jobs, path, overrides, priority=priority, force=force, batch=batch)
        ids.append(job.id)
    return ids


def _summarise(jobs: Any, ids: list[int], root: Any, code: int) -> None:
    """The jobs' final table; exit with the scheduler's code, else 1 when any job failed."""
    from ..scheduling.display import job_row, render_table

    finished = [jobs.get(job_id) for job_id in ids]
    click.echo("\nsummary:")
    click.echo(render_table([job_row(job, root) for job in finished], note_width=80))
    failed = [job for job in finished if job.state == "failed"]
    if code:
        sys.exit(code)
    if failed:
        logs = ", ".join(str(job.log_path) for job in failed)
        click.echo(f"{len(failed)} of {len(finished)} job(s) failed; logs: {logs}", err=True)
        sys.exit(1)
