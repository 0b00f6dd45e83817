"""Process control that holds on GPU boxes: a job's whole tree dies when it is killed, a failing rank is
named with its reason, and an out-of-memory error on any rank of a DDP job leads to the OOM retry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from test_precision import faults_env
from test_train import outputs, project  # noqa: F401  (fixture)

from lorakit import proctree
from lorakit.builtin.executors import LocalExecutor
from lorakit.scheduling.executor import LaunchSpec
from lorakit.scheduling.outcome import classify, is_oom
from lorakit.scheduling.queue import JobQueue

LORAKIT_TRAIN = (sys.executable, "-m", "lorakit", "train")


def test_kill_tree_reaches_grandchildren_in_their_own_sessions():
    # a child, a grandchild in a new session, and a great-grandchild under a child shell
    script = "sleep 60 & setsid sleep 60 & sh -c 'sleep 60 & wait' & wait"
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(proctree.descendants(proc.pid)) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = [proc.pid, *proctree.descendants(proc.pid)]
    assert len(tree) >= 5
    # a new session is outside the job's process group: killpg alone would miss it
    sessions = {os.getsid(pid) for pid in tree}
    assert len(sessions) >= 2
    killed = proctree.kill_tree(proc.pid)
    assert set(tree) <= set(killed)
    proc.wait(timeout=10)
    assert proctree.wait_gone(tree, timeout=10) == []


def _tree_pids(root: int, want: int, timeout: float = 120) -> list[int]:
    """Wait until ``root`` has ``want`` lorakit descendants (the launcher's torchrun and its ranks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in proctree.descendants(root) if proctree.is_lorakit(p)]
        if len(found) >= want:
            return [root, *proctree.descendants(root)]
        time.sleep(0.1)
    raise AssertionError(f"the job never had {want} lorakit processes")


def test_killing_an_nproc2_job_like_the_scheduler_leaves_no_process(project, tmp_path):  # noqa: F811
    out = outputs(project)
    config = project("killme", tasks=2, epochs=50, batch_size=4)
    spec = LaunchSpec(
        job_id=1,
        name="killme",
        argv=(sys.executable, "-m", "lorakit", "train", str(config), "--outputs", str(out), "--nproc", "2"),
        env={"LORAKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"},
        cwd=None,
        log_path=str(tmp_path / "job.log"),
    )
    handle = LocalExecutor().start(spec)
    tree = _tree_pids(handle.pid, want=3)  # torchrun + 2 ranks below `lorakit train --nproc 2`
    log = out / "killme" / "train.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and " step " in log.read_text(encoding="utf-8")):  # the ranks are training
        assert time.monotonic() < deadline and handle.poll() is None, (tmp_path / "job.log").read_text()
        time.sleep(0.1)
    tree = sorted(set(tree) | set(proctree.descendants(handle.pid)))
    handle.signal(signal.SIGKILL)
    assert handle.wait(timeout=30) == -signal.SIGKILL
    assert proctree.wait_gone(tree, timeout=10) == [], "processes of the job survived its kill"


def test_oom_on_rank_1_is_named_recorded_and_retried(project, cli):  # noqa: F811
    out = outputs(project)
    config = project("oom1", tasks=1, epochs=1, batch_size=8)
    result = subprocess.run(
        [
            *LORAKIT_TRAIN,
            str(config),
            "--outputs",
            str(out),
            "--nproc",
            "2",
            "--set",
            'train.loss="rank1_oom"',
        ],
        capture_output=True,
        text=True,
        env=faults_env(OMP_NUM_THREADS="1"),
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "Error: rank 1: OutOfMemoryError: CUDA out of memory (fake)" in result.stderr
    run = json.loads((out / "oom1" / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "failed"
    assert run["error"].startswith("rank 1: OutOfMemoryError: CUDA out of memory")
    assert is_oom(run, [])
    index = json.loads((out / "experiment_index.json").read_text(encoding="utf-8"))
    assert index["experiments"]["oom1"]["status"] == "failed"

    # the scheduler's reading of that exit: one retry, half the batch, twice the accumulation
    queue = JobQueue(out)
    job = queue.submit(exp_id="oom1", config_path=str(config), gpus=2)
    outcome = classify(job, 1, outputs=out, stop_reason=None, log_path=None)
    assert outcome.state == "queued" and outcome.start_mode == "force"
    assert "train.batch_size=4" in outcome.extra_overrides and "train.grad_accum=2" in outcome.extra_overrides


def test_one_run_per_experiment_folder_and_a_dead_holder_s_lock_is_taken_over(project):  # noqa: F811
    out = outputs(project)
    config = project("locked", tasks=1, epochs=1)
    marker = project.root / "locked.marker"
    args = [*LORAKIT_TRAIN, str(config), "--outputs", str(out), "--set", 'model.backbone="slow_bert"']
    first = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=faults_env(LORAKIT_FAULT_LOADING=str(marker), LORAKIT_FAULT_LOAD_SECONDS="60"),
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run([*args, "--force"], capture_output=True, text=True, env=faults_env())
    assert second.returncode == 2, second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert f"process {first.pid} is training this experiment" in line
    first.send_signal(signal.SIGKILL)  # the holder dies without a word: the kernel drops its lock
    first.wait()
    third = subprocess.run([*args, "--force"], capture_output=True, text=True, env=faults_env())
    assert third.returncode == 0, third.stderr
