"""The scheduler loop in-process, with a scripted executor and fake GPUs: order, packing, preemption,
cancel, OOM retry, crashes. Real processes are in test_sched_run.py."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from lorakit import hookimpl
from lorakit.plugins import Plugins, new_manager
from lorakit.scheduling.display import Board
from lorakit.scheduling.queue import JobQueue
from lorakit.scheduling.scheduler import Scheduler
from lorakit.scheduling.submit import submit_config
from lorakit.specs import Device, ExecutorSpec
from lorakit.testing import load_builtins

RUN_FOREVER = 10**9


class ScriptedHandle:
    """A job that ends after ``ticks`` polls with ``code`` (writing ``log``), or exits 75 once signalled."""

    def __init__(self, spec: Any, ticks: int, code: int, log: str):
        self.spec, self.ticks, self.code, self.log = spec, ticks, code, log
        self.polls = 0
        self.signals: list[int] = []
        self.result: int | None = None

    pid = None

    def poll(self) -> int | None:
        if self.result is None:
            self.polls += 1
            if self.signals:
                self.result = 75
            elif self.polls >= self.ticks:
                with open(self.spec.log_path, "a", encoding="utf-8") as fh:
                    fh.write(self.log)
                self.result = self.code
        return self.result

    def signal(self, signum: int) -> None:
        if self.result is None:
            self.signals.append(signum)

    def wait(self, timeout: float | None = None) -> int | None:
        return self.poll()


class ScriptedExecutor:
    """Plays per-experiment scripts: a list of (ticks, exit code, log text), one per start."""

    def __init__(self, scripts: dict[str, list[tuple[int, int, str]]], on_start: Any = None):
        self.scripts = scripts
        self.on_start = on_start
        self.started: list[tuple[str, tuple[str, ...], tuple[int, ...]]] = []
        self.specs: list[Any] = []
        self.handles: dict[str, list[ScriptedHandle]] = {}

    def start(self, spec: Any) -> ScriptedHandle:
        ticks, code, log = self.scripts[spec.name].pop(0) if self.scripts.get(spec.name) else (2, 0, "")
        handle = ScriptedHandle(spec, ticks, code, log)
        self.started.append((spec.name, spec.argv, spec.devices))
        self.specs.append(spec)
        self.handles.setdefault(spec.name, []).append(handle)
        if self.on_start:
            self.on_start(spec)
        return handle

    def close(self) -> None:
        pass


class FakePool:
    """GPUs given as {index: MiB}, or as Device objects (UUIDs, MIG slices, compute modes)."""

    def __init__(self, sizes: dict[int, int] | list[Device], executor: ScriptedExecutor):
        self.sizes = sizes
        self.executor = executor

    @hookimpl(tryfirst=True)
    def lorakit_detect_devices(self):
        if isinstance(self.sizes, list):
            return self.sizes
        return [Device(index=i, name=f"fake{i}", total_mb=mb, free_mb=mb) for i, mb in self.sizes.items()]

    @hookimpl
    def lorakit_register_executors(self, register):
        register(ExecutorSpec(name="scripted", create=lambda: self.executor))


@pytest.fixture(autouse=True)
def no_cuda_visible(monkeypatch):
    """The fake inventories are the whole machine: a CUDA_VISIBLE_DEVICES of the host must not cut them."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def configs(tmp_path: Path):
    def write(
        name: str, *, memory: int | None = None, priority: str = "medium", batch: int = 16, gpus: int = 1
    ) -> Path:
        lines = [
            f'exp_id = "{name}"',
            "[data]",
            'raw_data_path = "train.csv"',
            'label_subset = ["a", "b"]',
            "[model]",
            'arch = "some-model"',
            "[train]",
            f"batch_size = {batch}",
            "[resources]",
            f'priority = "{priority}"',
            f"gpus = {gpus}",
            *([f"memory_mb = {memory}"] if memory is not None else []),
        ]
        path = tmp_path / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


def make_scheduler(
    tmp_path: Path, gpus: dict[int, int] | list[Device], executor: ScriptedExecutor, **options: Any
) -> tuple[Scheduler, io.StringIO]:
    pm = new_manager(load_entrypoints=False)
    load_builtins(pm)
    pm.register(FakePool(gpus, executor), name="fake_pool")
    out = io.StringIO()
    scheduler = Scheduler(
        tmp_path / "outputs",
        plugins=Plugins(pm),
        executor="scripted",
        exit_when_done=True,
        poll_s=0.0,
        board=Board(out, live=False),
        **options,
    )
    return scheduler, out


def submit(tmp_path: Path, config: Path, **kwargs: Any):
    return submit_config(JobQueue(tmp_path / "outputs"), config, **kwargs)


def test_priority_order_fifo_within_level_on_cpu(tmp_path, configs):
    names = [("low1", "low"), ("med1", "medium"), ("high1", "high"), ("low2", "low"), ("high2", "high")]
    for name, priority in names:
        submit(tmp_path, configs(name, priority=priority))
    executor = ScriptedExecutor({})
    scheduler, _ = make_scheduler(tmp_path, {}, executor)
    assert scheduler.run() == 0
    assert [name for name, _argv, _dev in executor.started] == ["high1", "high2", "med1", "low1", "low2"]
    assert all(devices == () for _n, _a, devices in executor.started)
    assert {job.state for job in JobQueue(tmp_path / "outputs").jobs()} == {"done"}


def test_packing_by_estimate_spreads_then_shares(tmp_path, configs):
    for name, memory in [("a", 5000), ("b", 5000), ("c", 2000), ("d", 2000), ("e", 7000)]:
        submit(tmp_path, configs(name, memory=memory))
    executor = ScriptedExecutor({name: [(5, 0, "")] for name in "abcde"})
    scheduler, _ = make_scheduler(tmp_path, {0: 8000, 1: 8000}, executor)
    assert scheduler.run() == 0
    order = [(name, devices) for name, _argv, devices in executor.started]
    # a and b (5500 reserved each) cannot share; c and d (2256) pack next to them; e waits for a free GPU
    assert order[:4] == [("a", (0,)), ("b", (1,)), ("c", (0,)), ("d", (1,))]
    assert order[4][0] == "e"


def test_job_larger_than_every_gpu_fails_at_once(tmp_path, configs):
    submit(tmp_path, configs("huge", memory=9000))
    scheduler, _ = make_scheduler(tmp_path, {0: 8000}, ScriptedExecutor({}))
    assert scheduler.run() == 0
    job = JobQueue(tmp_path / "outputs").jobs()[0]
    assert job.state == "failed"
    assert "the largest GPU in the pool has 8000 MiB" in job.note


def test_high_priority_preempts_low_which_resumes(tmp_path, configs):
    submit(tmp_path, configs("low", memory=6000, priority="low"))
    high = configs("high", memory=6000, priority="high")

    submitted: list[Any] = []

    def on_start(spec: Any) -> None:
        if spec.name == "low" and not submitted:  # a high job arrives while the low one runs
            submitted.append(submit(tmp_path, high))

    executor = ScriptedExecutor({"low": [(RUN_FOREVER, 0, ""), (3, 0, "")]}, on_start=on_start)
    scheduler, out = make_scheduler(tmp_path, {0: 8000}, executor)
    assert scheduler.run() == 0
    assert [name for name, _a, _d in executor.started] == ["low", "high", "low"]
    assert executor.handles["low"][0].signals == [signal.SIGUSR1]
    jobs = {job.exp_id: job for job in JobQueue(tmp_path / "outputs").jobs()}
    assert jobs["low"].state == "done" and jobs["low"].preemptions == 1
    assert "preempted by job 2 high (high)" in jobs["low"].notes
    assert "asked to checkpoint and yield to job 2 high (high)" in out.getvalue()


def test_equal_priority_never_preempts(tmp_path, configs):
    submit(tmp_path, configs("first", memory=6000))
    submit(tmp_path, configs("second", memory=6000))
    executor = ScriptedExecutor({"first": [(4, 0, "")]})
    scheduler, _ = make_scheduler(tmp_path, {0: 8000}, executor)
    assert scheduler.run() == 0
    assert executor.handles["first"][0].signals == []
    assert [name for name, _a, _d in executor.started] == ["first", "second"]


def test_oom_is_retried_once_with_half_batch(tmp_path, configs):
    submit(tmp_path, configs("big", memory=1000, batch=16))
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    executor = ScriptedExecutor({"big": [(2, 1, oom), (2, 1, oom)]})
    scheduler, _ = make_scheduler(tmp_path, {0: 8000}, executor)
    assert scheduler.run() == 0
    first, second = (argv for _n, argv, _d in executor.started)
    assert "--set" not in first
    assert second[-5:] == ("--set", "train.batch_size=8", "--set", "train.grad_accum=2", "--force")
    job = JobQueue(tmp_path / "outputs").jobs()[0]
    assert job.state == "failed" and job.oom_retries == 1  # a second OOM is not retried again
    assert any("retried with train.batch_size=8, train.grad_accum=2" in note for note in job.notes)


def test_crash_leaves_the_others_running(tmp_path, configs):
    for name in ("ok1", "bad", "ok2"):
        submit(tmp_path, configs(name))
    executor = ScriptedExecutor({"bad": [(1, 2, "Error: data.raw_data_path: no such file\n")]})
    scheduler, _ = make_scheduler(tmp_path, {}, executor, max_parallel=3)
    assert scheduler.run() == 0
    states = {job.exp_id: (job.state, job.note) for job in JobQueue(tmp_path / "outputs").jobs()}
    assert states["ok1"][0] == states["ok2"][0] == "done"
    assert states["bad"] == ("failed", "exit 2: Error: data.raw_data_path: no such file")


def test_cancel_queued_and_running(tmp_path, configs):
    queue = JobQueue(tmp_path / "outputs")
    runner = submit(tmp_path, configs("runner"))
    waiter = submit(tmp_path, configs("waiter"))
    assert queue.cancel(waiter.id).state == "cancelled"

    def on_start(spec: Any) -> None:
        queue.cancel(runner.id)

    executor = ScriptedExecutor({"runner": [(RUN_FOREVER, 0, "")]}, on_start=on_start)
    scheduler, _ = make_scheduler(tmp_path, {}, executor)
    assert scheduler.run() == 0
    assert executor.handles["runner"][0].signals == [signal.SIGTERM]
    job = queue.get(runner.id)
    assert job.state == "cancelled" and "checkpoint kept" in job.note
    assert [name for name, _a, _d in executor.started] == ["runner"]


def test_jobs_left_running_by_a_dead_scheduler_are_settled(tmp_path, configs):
    queue = JobQueue(tmp_path / "outputs")
    finished = submit(tmp_path, configs("finished"))
    cut = submit(tmp_path, configs("cut"))
    for job in (finished, cut):
        queue.update(job.id, state="running", pid=None)
    folder = tmp_path / "outputs" / "finished"
    folder.mkdir()
    (folder / "run.json").write_text('{"status": "completed"}', encoding="utf-8")
    executor = ScriptedExecutor({})
    scheduler, out = make_scheduler(tmp_path, {}, executor)
    assert scheduler.run() == 0
    assert queue.get(finished.id).state == "done"
    resumed = queue.get(cut.id)
    assert resumed.state == "done" and resumed.notes == (
        "found running after its scheduler stopped: preempted",
    )
    assert [name for name, _a, _d in executor.started] == ["cut"]
    assert "left running by a stopped scheduler" in out.getvalue()


def test_live_board_redraws_in_place():
    out = io.StringIO()
    board = Board(out, live=True)
    row = {
        "job": 1,
        "exp_id": "a",
        "priority": "high",
        "state": "running",
        "device": "GPU-0",
        "epochs_done": 1,
        "epochs": 3,
        "best_metric": "avg_f1",
        "best": 0.5,
        "note": "",
    }
    board.refresh(lambda: [row], every_s=0)
    board.event("job 1 a: done")
    board.refresh(lambda: [row], every_s=0)
    text = out.getvalue()
    assert text.count("avg_f1 0.5000") == 2 and "1/3" in text
    assert "\x1b[3F\x1b[J" in text  # the 3-line table is erased before the event line


def test_queue_and_cancel_commands(tmp_path, configs):
    from click.testing import CliRunner

    from lorakit.commands.sched import cancel, queue

    outputs = tmp_path / "outputs"
    job = submit(tmp_path, configs("waiting", priority="high"))
    listed = CliRunner().invoke(queue, ["--outputs", str(outputs)])
    assert listed.exit_code == 0
    assert "waiting" in listed.output and "high" in listed.output and "queued" in listed.output
    assert "scheduler: not running" in listed.output
    cancelled = CliRunner().invoke(cancel, [str(job.id), "--outputs", str(outputs)])
    assert cancelled.output.strip() == f"job {job.id} waiting: cancelled"
    rows = CliRunner().invoke(queue, ["--outputs", str(outputs), "--json"])
    assert [(r["job"], r["state"]) for r in json.loads(rows.output)] == [(job.id, "cancelled")]


# ---- real-box inventories: exclusive-process GPUs, MIG slices, UUIDs, CUDA_VISIBLE_DEVICES --------------


def gpu(index: int, mb: int = 8000, **fields: Any) -> Device:
    return Device(index=index, name=f"fake{index}", total_mb=mb, free_mb=mb, **fields)


def mig_slice(parent: int, mig: int, mb: int, uuid: str) -> Device:
    index = Device.mig_index_of(parent, mig)
    return Device(
        index=index,
        name=f"slice{parent}/{mig}",
        total_mb=mb,
        free_mb=mb,
        uuid=uuid,
        parent_index=parent,
        mig_index=mig,
    )


def test_an_exclusive_process_gpu_takes_one_job(tmp_path, configs):
    for name in "abc":
        submit(tmp_path, configs(name, memory=1000))

    def on_start(spec: Any) -> None:
        on_gpu0 = [
            h for hs in executor.handles.values() for h in hs if h.spec.devices == (0,) and h.result is None
        ]
        assert len(on_gpu0) <= 1, "a second job was packed on the exclusive-process GPU"

    executor = ScriptedExecutor({name: [(4, 0, "")] for name in "abc"}, on_start=on_start)
    pool = [gpu(0, compute_mode="exclusive_process"), gpu(1)]
    scheduler, out = make_scheduler(tmp_path, pool, executor)
    assert scheduler.run() == 0
    # a (most room, lowest index) takes GPU 0 alone; b and c share GPU 1 although GPU 0 has room to spare
    assert [(name, devices) for name, _argv, devices in executor.started] == [
        ("a", (0,)),
        ("b", (1,)),
        ("c", (1,)),
    ]
    assert "0 (fake0, 8000 MiB, one job at a time)" in out.getvalue()


def test_a_job_waits_for_the_exclusive_gpu_and_preempts_for_it(tmp_path, configs):
    submit(tmp_path, configs("first", memory=1000, priority="low"))
    submit(tmp_path, configs("second", memory=1000, priority="low"))
    urgent = configs("urgent", memory=1000, priority="high")

    submitted: list[Any] = []

    def on_start(spec: Any) -> None:
        if spec.name == "second" and not submitted:  # the high job arrives while the second one holds the GPU
            submitted.append(submit(tmp_path, urgent))

    executor = ScriptedExecutor(
        {"first": [(3, 0, "")], "second": [(RUN_FOREVER, 0, ""), (2, 0, "")]}, on_start=on_start
    )
    scheduler, _ = make_scheduler(tmp_path, [gpu(0, compute_mode="exclusive_process")], executor)
    assert scheduler.run() == 0
    # memory would fit all three at once; the compute mode does not
    assert [name for name, _a, _d in executor.started] == ["first", "second", "urgent", "second"]
    assert executor.handles["first"][0].signals == []
    assert executor.handles["second"][0].signals == [signal.SIGUSR1]
    assert executor.handles["first"][0].polls >= 3  # second started only once first had ended


def test_a_prohibited_gpu_takes_no_job(tmp_path, configs):
    submit(tmp_path, configs("a", memory=1000))
    executor = ScriptedExecutor({})
    scheduler, out = make_scheduler(tmp_path, [gpu(0, compute_mode="prohibited"), gpu(1)], executor)
    assert scheduler.run() == 0
    assert executor.started[0][2] == (1,)
    assert "GPUs 1 (fake1" in out.getvalue() and "GPUs 0" not in out.getvalue()


def test_mig_slices_are_devices_with_their_own_memory(tmp_path, configs):
    for name in ("a", "b", "c"):
        submit(tmp_path, configs(name, memory=3000))
    submit(tmp_path, configs("wide", memory=1000, gpus=2))
    submit(tmp_path, configs("big", memory=5000))
    executor = ScriptedExecutor({name: [(3, 0, "")] for name in "abc"})
    pool = [mig_slice(0, 0, 4000, "MIG-aaa"), mig_slice(0, 1, 4000, "MIG-bbb")]
    scheduler, _ = make_scheduler(tmp_path, pool, executor)
    assert scheduler.run() == 0
    # 3300 MiB reserved each: one job per 4000 MiB slice, the third waits for one of them
    placed = [(name, devices) for name, _argv, devices in executor.started]
    assert placed[:2] == [("a", (100,)), ("b", (101,))] and placed[2][0] == "c"
    assert [spec.env["CUDA_VISIBLE_DEVICES"] for spec in executor.specs[:2]] == ["MIG-aaa", "MIG-bbb"]
    jobs = {job.exp_id: job for job in JobQueue(tmp_path / "outputs").jobs()}
    assert (jobs["a"].device, jobs["b"].device) == ("GPU-0/MIG-0", "GPU-0/MIG-1")
    # a slice is no part of a job of several GPUs (one MIG device per process, no NCCL across slices)
    assert jobs["wide"].state == "failed"
    assert "needs 2 GPUs; the pool has 0 (MIG slices take one-GPU jobs only)" in jobs["wide"].note
    assert jobs["big"].state == "failed" and "the largest GPU in the pool has 4000 MiB" in jobs["big"].note


def test_jobs_get_uuids_and_an_index_only_without_one(tmp_path, configs):
    submit(tmp_path, configs("pair", memory=5000, gpus=2))
    submit(tmp_path, configs("plain", memory=5000))
    executor = ScriptedExecutor({"pair": [(2, 0, "")]})
    pool = [gpu(0, uuid="GPU-aaa"), gpu(1, uuid="GPU-bbb"), gpu(2)]
    scheduler, _ = make_scheduler(tmp_path, pool, executor, gpu_pool=("GPU-a", "GPU-bbb", 2))
    assert scheduler.run() == 0
    envs = {spec.name: spec.env for spec in executor.specs}
    assert envs["pair"]["CUDA_VISIBLE_DEVICES"] == "GPU-aaa,GPU-bbb"
    assert envs["plain"]["CUDA_VISIBLE_DEVICES"] == "2"  # no UUID: NVML's index, in PCI order
    assert envs["plain"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    log = tmp_path / "outputs" / "pair" / "scheduler.log"
    side = tmp_path / "outputs" / ".scheduler-logs" / "job-1.log"
    header = (log if log.is_file() else side).read_text(encoding="utf-8")
    assert "on GPU-0,GPU-1 (CUDA_VISIBLE_DEVICES=GPU-aaa,GPU-bbb)" in header


@pytest.mark.parametrize(
    ("cuda_visible", "expected"),
    [("GPU-bbb", [(1,), (1,)]), ("1", [(1,), (1,)]), ("MIG-c", [(300,), (300,)]), ("", [(), ()])],
)
def test_the_scheduler_uses_only_what_cuda_visible_devices_leaves(
    tmp_path, configs, monkeypatch, cuda_visible, expected
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible)
    for name in ("a", "b"):
        submit(tmp_path, configs(name, memory=1000))
    executor = ScriptedExecutor({})
    pool = [gpu(0, uuid="GPU-aaa"), gpu(1, uuid="GPU-bbb"), mig_slice(2, 0, 4000, "MIG-ccc")]
    scheduler, out = make_scheduler(tmp_path, pool, executor)
    assert scheduler.run() == 0
    assert [devices for _n, _a, devices in executor.started] == expected
    if not cuda_visible:
        assert "no GPU in the pool: CPU jobs" in out.getvalue()
