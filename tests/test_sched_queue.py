"""The SQLite job queue (concurrent submitters included) and the placement functions."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lorakit.errors import LorakitError
from lorakit.scheduling.placement import (
    GpuState,
    RunningJob,
    available_mb,
    margin_mb,
    place,
    plan_preemption,
    plan_slot_preemption,
    reservation_mb,
)
from lorakit.scheduling.queue import JobQueue, QueueError
from lorakit.scheduling.submit import expand_configs, submit_config

CONFIG = """exp_id = "{name}"
[data]
raw_data_path = "train.csv"
label_subset = ["a", "b"]
[model]
arch = "some-model"
[resources]
priority = "{priority}"
"""


def write_config(folder: Path, name: str, priority: str = "medium") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(CONFIG.format(name=name, priority=priority), encoding="utf-8")
    return path


# ---- queue --------------------------------------------------------------------------------------


def test_queue_is_sqlite_in_wal_mode(tmp_path):
    queue = JobQueue(tmp_path)
    job = submit_config(queue, write_config(tmp_path, "a"), ["train.lr=0.001"])
    assert (job.id, job.exp_id, job.state, job.priority, job.overrides) == (
        1,
        "a",
        "queued",
        "medium",
        ("train.lr=0.001",),
    )
    with sqlite3.connect(tmp_path / "scheduler.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_pending_order_is_priority_then_fifo_and_preempted_keep_their_place(tmp_path):
    queue = JobQueue(tmp_path)
    for name, priority in [("l1", "low"), ("m1", "medium"), ("h1", "high"), ("m2", "medium"), ("l2", "low")]:
        submit_config(queue, write_config(tmp_path, name, priority))
    queue.update(2, state="running")
    queue.update(2, state="preempted")
    assert [job.exp_id for job in queue.pending()] == ["h1", "m1", "m2", "l1", "l2"]
    # --priority beats the config's resources.priority
    job = submit_config(queue, write_config(tmp_path, "x", "low"), priority="high")
    assert job.priority == "high" and queue.pending()[1].exp_id == "x"


def test_duplicate_and_cancel_rules(tmp_path):
    queue = JobQueue(tmp_path)
    config = write_config(tmp_path, "a")
    job = submit_config(queue, config)
    with pytest.raises(QueueError, match="already in the queue as job 1"):
        submit_config(queue, config)
    assert queue.cancel(job.id).state == "cancelled"
    with pytest.raises(QueueError, match="already cancelled"):
        queue.cancel(job.id)
    running = submit_config(queue, config)  # a cancelled experiment may be queued again
    queue.update(running.id, state="running")
    flagged = queue.cancel(running.id)
    assert flagged.state == "running" and flagged.cancel_requested
    with pytest.raises(QueueError, match="no job 99"):
        queue.cancel(99)


def test_submit_refuses_what_train_would_refuse(tmp_path):
    queue = JobQueue(tmp_path)
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "run.json").write_text('{"status": "completed"}', encoding="utf-8")
    config = write_config(tmp_path, "a")
    with pytest.raises(LorakitError, match="completed experiment; submit with --force"):
        submit_config(queue, config)
    (folder / "run.json").write_text('{"status": "preempted"}', encoding="utf-8")
    with pytest.raises(LorakitError, match=r"unfinished run \(preempted\); submit with --resume"):
        submit_config(queue, config)
    assert submit_config(queue, config, resume=True).start_mode == "resume"


def test_expand_configs(tmp_path, monkeypatch):
    for name in ("exp_v1_a", "exp_v1_b", "exp_v4_c", "other"):
        write_config(tmp_path, name)
    monkeypatch.chdir(tmp_path)
    found = expand_configs("exp_v1*.toml, exp_v4*.toml,exp_v1_a.toml")
    assert [p.name for p in found] == ["exp_v1_a.toml", "exp_v1_b.toml", "exp_v4_c.toml"]
    with pytest.raises(LorakitError, match="nothing matches 'nope"):
        expand_configs("nope*.toml")


def test_two_concurrent_submits_both_land(tmp_path):
    """Two real `lorakit submit` processes at the same moment: both jobs are in the queue."""
    outputs = tmp_path / "outputs"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lorakit",
                "submit",
                str(write_config(tmp_path, name)),
                "--outputs",
                str(outputs),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "queued in" in out
    jobs = JobQueue(outputs).jobs()
    assert sorted(job.exp_id for job in jobs) == ["first", "second"]
    assert sorted(job.id for job in jobs) == [1, 2]


# ---- placement ----------------------------------------------------------------------------------


def gpu(index: int, total: int = 8000, free: int | None = None) -> GpuState:
    return GpuState(index=index, total_mb=total, free_mb=total if free is None else free)


def job(job_id: int, devices: tuple[int, ...], reserved: int, rank: int = 1, **kw) -> RunningJob:
    return RunningJob(
        job_id=job_id, rank=rank, devices=devices, reserved_mb=reserved, started_at=kw.pop("at", 0.0), **kw
    )


def test_margin_and_reservation():
    assert margin_mb(1000) == 256 and margin_mb(5000) == 500
    assert reservation_mb(5000) == 5500


def test_available_counts_reservations_nvml_does_not_see_yet():
    g = gpu(0, 8000, free=7000)  # 1000 MiB used by somebody else
    fresh = job(1, (0,), 3000, at=100.0)
    settled = job(2, (0,), 2000, at=0.0)
    # fresh: not in NVML's free yet → subtract; settled: in it already → only the total bound counts
    assert available_mb(g, [fresh], now=110.0) == min(7000 - 3000, 8000 - 3000)
    assert available_mb(g, [settled], now=1000.0) == min(7000, 8000 - 2000)
    assert available_mb(g, [settled], now=1000.0, gone=frozenset({2})) == min(9000, 8000)


def test_place_spreads_then_packs_and_refuses_what_does_not_fit():
    gpus = [gpu(0), gpu(1, 6000)]
    assert place(5500, 1, gpus, [], now=0) == (0,)
    running = [job(1, (0,), 5500)]
    assert place(5500, 1, gpus, running, now=0) == (1,)
    running.append(job(2, (1,), 5500))
    assert place(2256, 1, gpus, running, now=0) == (0,)  # 2500 left on GPU 0, 500 on GPU 1
    assert place(3000, 1, gpus, running, now=0) is None
    assert place(2000, 2, [gpu(0), gpu(1), gpu(2)], [job(1, (1,), 7000)], now=0) == (0, 2)


def test_preemption_takes_lowest_priority_youngest_first():
    gpus = [gpu(0)]
    running = [
        job(1, (0,), 3000, rank=0, at=1.0),
        job(2, (0,), 3000, rank=0, at=2.0),
        job(3, (0,), 1500, rank=1, at=3.0),
    ]
    assert plan_preemption(2, 2500, 1, gpus, running, now=10) == [2]  # one low job suffices: the younger
    assert plan_preemption(2, 5500, 1, gpus, running, now=10) == [1, 2]
    assert plan_preemption(2, 7000, 1, gpus, running, now=10) == [1, 2, 3]
    assert plan_preemption(1, 7000, 1, gpus, running, now=10) is None  # medium may not push medium
    assert plan_preemption(0, 1000, 1, gpus, running, now=10) is None  # nobody is lower than low


def test_preemption_waits_for_jobs_already_yielding():
    gpus = [gpu(0)]
    running = [job(1, (0,), 6000, rank=0, yielding=True), job(2, (0,), 1000, rank=0)]
    assert plan_preemption(2, 6500, 1, gpus, running, now=10) == []
    assert plan_preemption(2, 7500, 1, gpus, running, now=10) == [2]


def test_preemption_prefers_the_gpu_with_fewest_victims():
    gpus = [gpu(0), gpu(1)]
    running = [job(1, (0,), 3000, rank=0), job(2, (0,), 3000, rank=0), job(3, (1,), 7000, rank=0)]
    assert plan_preemption(2, 6000, 1, gpus, running, now=10) == [3]


def test_slot_preemption_on_cpu():
    running = [job(1, (), 0, rank=0, at=1.0), job(2, (), 0, rank=1, at=2.0)]
    assert plan_slot_preemption(2, running, 2) == [1]
    assert plan_slot_preemption(2, running, 3) == []
    assert plan_slot_preemption(0, running, 2) is None
