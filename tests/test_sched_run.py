"""The scheduler for real: `lorakit` processes training a tiny BERT on CPU, placed on fake GPUs announced by
the test plugin in tests/plugins_fake_gpus (memory needs forced per job with resources.memory_mb)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lorakit import Experiment
from lorakit.scheduling.queue import JobQueue
from lorakit.scheduling.submit import submit_config
from lorakit.testing import synthetic_frame

FAKE_PLUGINS = Path(__file__).parent / "plugins_fake_gpus"
pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path: Path, tiny_bert: Path):
    """A tmp project with a data file and a config writer."""
    synthetic_frame(200, seed=3, tasks=2).to_csv(tmp_path / "train.csv", index=False)

    def write(name: str, *, priority: str = "medium", memory: int = 1000, data: str = "train.csv", **train):
        train = {"batch_size": 16, "lr": 5e-3, "epochs": 1, **train}
        loss_options = train.pop("loss_options", None)
        lines = [
            f'exp_id = "{name}"',
            "[data]",
            f'raw_data_path = "{(tmp_path / data).as_posix()}"',
            f'cache_dir = "{(tmp_path / "cache").as_posix()}"',
            "max_len = 32",
            "val_ratio = 0.25",
            "[data.label_subset]",
            'risk_level = ["低风险", "中风险", "高风险"]',
            'is_adopt = ["采纳", "不采纳"]',
            "[model]",
            f'arch = "{tiny_bert.as_posix()}"',
            "[model.lora]",
            "rank = 4",
            "alpha = 8",
            "[train]",
            *(f"{k} = {json.dumps(v)}" for k, v in train.items()),
            *(
                ["[train.loss_options]", *(f"{k} = {v}" for k, v in loss_options.items())]
                if loss_options
                else []
            ),
            "[resources]",
            f'priority = "{priority}"',
            f"memory_mb = {memory}",
        ]
        path = tmp_path / "configs" / f"{name}.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    write.root = tmp_path  # type: ignore[attr-defined]
    return write


def env(gpus: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(FAKE_PLUGINS), os.environ.get("PYTHONPATH")]))
    # the fake GPUs are the whole machine: the host's CUDA_VISIBLE_DEVICES must not cut them
    base = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    # one thread per job: several jobs share this machine's few cores
    return {**base, "PYTHONPATH": path, "LORAKIT_FAKE_GPUS": gpus, "OMP_NUM_THREADS": "1"}


def lorakit(*args: str, gpus: str, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "w", encoding="utf-8") if log else subprocess.PIPE  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "lorakit", *args],
        env=env(gpus),
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(what: str, check: Callable[[], object], proc: subprocess.Popen, log: Path, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; scheduler log:\n{log.read_text(encoding='utf-8')}")


def has_checkpoint(folder: Path) -> bool:
    return any((folder / "checkpoints").glob("step-*"))


def jobs_by_exp(outputs: Path):
    return {job.exp_id: job for job in JobQueue(outputs).jobs()}


def strip(metrics: dict) -> dict:
    return {
        key: {k: v for k, v in value.items() if k != "epoch_seconds"} if isinstance(value, dict) else value
        for key, value in metrics.items()
    }


def solo_run(config: Path, outputs: Path):
    """An uninterrupted run, in-process, with the jobs' one thread (thread count changes float sums)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Experiment(config, outputs=outputs).run(echo=False)
    finally:
        torch.set_num_threads(threads)


def test_run_parallel_packs_by_estimate_survives_a_crash_and_retries_oom(project):
    out = project.root / "outputs"
    project("a", memory=5000)
    project("b", memory=5000)
    project("crash", memory=500, data="missing.csv")
    project("oom", memory=500, loss="fake_oom", loss_options={"max_batch": 8}, batch_size=16)
    proc = lorakit(
        "run-parallel",
        "--configs",
        str(project.root / "configs" / "*.toml"),
        "--outputs",
        str(out),
        "--poll-interval",
        "0.1",
        gpus="0:8000:uuid=GPU-aaa,1:8000:uuid=GPU-bbb",
    )
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, stdout
    jobs = jobs_by_exp(out)
    assert {name: job.state for name, job in jobs.items()} == {
        "a": "done",
        "b": "done",
        "crash": "failed",
        "oom": "done",
    }, stdout
    # 5000 + margin twice does not fit 8000 MiB: a and b on different GPUs; the small jobs pack beside them
    assert {jobs["a"].device, jobs["b"].device} == {"GPU-0", "GPU-1"}
    assert jobs["crash"].device in ("GPU-0", "GPU-1") and jobs["oom"].device in ("GPU-0", "GPU-1")
    assert max(job.started_at for job in jobs.values() if job.attempts == 1) < jobs["a"].ended_at

    assert "missing.csv" in jobs["crash"].note and jobs["crash"].exit_code == 2
    oom = jobs["oom"]
    assert oom.oom_retries == 1 and oom.attempts == 2
    assert oom.extra_overrides == ("train.batch_size=8", "train.grad_accum=2")
    run = json.loads((out / "oom" / "run.json").read_text(encoding="utf-8"))
    assert run["key_params"]["batch_size"] == 8
    assert any("CUDA out of memory with train.batch_size=16" in note for note in run["notes"])
    log = (out / "oom" / "scheduler.log").read_text(encoding="utf-8")
    assert "attempt 1" in log and "attempt 2" in log and "OutOfMemoryError" in log  # both attempts kept
    assert (out / "a" / "scheduler.log").is_file() and (out / "a" / "metrics.json").is_file()
    # jobs name their GPU by UUID, not by index
    uuid = {"GPU-0": "GPU-aaa", "GPU-1": "GPU-bbb"}[jobs["a"].device]
    assert f"(CUDA_VISIBLE_DEVICES={uuid})" in (out / "a" / "scheduler.log").read_text(encoding="utf-8")
    summary = stdout.split("summary:")[1]
    assert all(name in summary for name in ("a", "b", "crash", "oom"))
    assert "1 of 4 job(s) failed" in stdout


def test_the_scheduler_process_honours_cuda_visible_devices_and_uuid_pools(tmp_path):
    gpus = "0:8000:uuid=GPU-aaa,1:8000:uuid=GPU-bbb:mode=exclusive_process"
    cases = [
        ({"CUDA_VISIBLE_DEVICES": "GPU-bbb"}, [], "GPUs 1 (Fake GPU 1, 8000 MiB, one job at a time)"),
        ({"CUDA_VISIBLE_DEVICES": "1"}, [], "GPUs 1 (Fake GPU 1"),
        ({"CUDA_VISIBLE_DEVICES": ""}, [], "no GPU in the pool: CPU jobs"),
        ({}, ["--gpu-pool", "GPU-a"], "GPUs 0 (Fake GPU 0, 8000 MiB)"),
    ]
    for extra_env, options, says in cases:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "lorakit",
                "scheduler",
                "--outputs",
                str(tmp_path),
                "--exit-when-done",
                *options,
            ],
            env={**env(gpus), **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert says in done.stdout, (extra_env, options, done.stdout)
        assert "GPUs 0" not in done.stdout or "GPU-a" in options


def test_high_priority_preempts_low_then_sigint_leaves_everything_resumable(project, cli):
    out = project.root / "outputs"
    slow = {"batch_size": 4, "epochs": 3, "checkpoint_every_steps": 3, "lr": 2e-3}
    low = project("low", priority="low", memory=6000, **slow)
    high = project("high", priority="high", memory=6000, batch_size=4, epochs=2, checkpoint_every_steps=3)
    solo = solo_run(project("solo", **slow), project.root / "solo_out")

    submit_config(JobQueue(out), low)
    log = project.root / "scheduler.out"
    args = ("scheduler", "--outputs", str(out), "--poll-interval", "0.1")
    scheduler = lorakit(*args, gpus="0:8000", log=log)
    try:
        wait_for("low to checkpoint", lambda: has_checkpoint(out / "low"), scheduler, log)
        submit_config(JobQueue(out), high)  # arrives while low runs; needs low's room
        wait_for(
            "low preempted, high running",
            lambda: (lambda j: j["low"].state == "preempted" and j["high"].state == "running")(
                jobs_by_exp(out)
            ),
            scheduler,
            log,
        )
        assert json.loads((out / "low" / "run.json").read_text(encoding="utf-8"))["status"] == "preempted"

        second = subprocess.run(
            [sys.executable, "-m", "lorakit", *args], env=env("0:8000"), capture_output=True, text=True
        )
        assert second.returncode == 2
        assert second.stderr.strip().startswith("Error: a scheduler is already running for")
        assert len(second.stderr.strip().splitlines()) == 1

        wait_for("high to checkpoint", lambda: has_checkpoint(out / "high"), scheduler, log)
        scheduler.send_signal(signal.SIGINT)
        assert scheduler.wait(timeout=120) == 130, log.read_text(encoding="utf-8")
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
    jobs = jobs_by_exp(out)
    for name in ("low", "high"):
        assert jobs[name].state == "preempted", log.read_text(encoding="utf-8")
        assert has_checkpoint(out / name)
        assert json.loads((out / name / "run.json").read_text(encoding="utf-8"))["status"] == "preempted"
    assert "preempted by job 2 high (high)" in jobs["low"].notes
    assert "interrupted: the scheduler stopped" in jobs["high"].notes

    resumed = cli("train", str(high), "--outputs", str(out), "--resume", env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr

    again = lorakit(
        "scheduler", "--outputs", str(out), "--exit-when-done", "--poll-interval", "0.1", gpus="0:8000"
    )
    stdout, _ = again.communicate(timeout=300)
    assert again.returncode == 0, stdout
    jobs = jobs_by_exp(out)
    assert jobs["high"].state == "done" and "already holds the completed run" in jobs["high"].note
    assert jobs["low"].state == "done" and jobs["low"].preemptions >= 1
    metrics = json.loads((out / "low" / "metrics.json").read_text(encoding="utf-8"))
    assert strip(metrics) == strip(solo.metrics)
