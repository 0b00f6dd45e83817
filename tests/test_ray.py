"""run-parallel on a local Ray instance: three tiny experiments, one of them failing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import outputs, project  # noqa: F401  (fixture)

pytest.importorskip("ray", reason="the ray executor is optional: pip install 'lorakit[ray]'")


def test_three_experiments_through_ray(project):  # noqa: F811
    out = outputs(project)
    for name in ("ray_a", "ray_b"):
        project(name, tasks=2, epochs=1)
    bad = project("ray_bad", tasks=2, epochs=1)
    bad.write_text(bad.read_text(encoding="utf-8").replace('"train.csv"', '"missing.csv"'), encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable, "-m", "lorakit", "run-parallel", "--executor", "ray",
            "--configs", str(project.root / "ray_*.toml"), "--outputs", str(out), "--poll-interval", "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_DISABLE_USAGE_STATS": "1"},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr  # one job failed, the others finished
    assert "executor ray places the jobs" in result.stdout + result.stderr
    index = json.loads((out / "experiment_index.json").read_text(encoding="utf-8"))["experiments"]
    assert index["ray_a"]["status"] == "completed" and index["ray_b"]["status"] == "completed"
    assert "ray_bad" not in index or index["ray_bad"]["status"] != "completed"
    summary = result.stdout[result.stdout.index("summary:") :]
    assert "ray_bad" in summary and "failed" in summary and "exit 2" in summary


def test_ray_missing_names_the_extra(tmp_path: Path):
    from lorakit.builtin import ray_executor
    from lorakit.errors import PluginError

    probe = (
        "import sys; sys.modules['ray'] = None\n"
        "from lorakit.builtin.ray_executor import RayExecutor\n"
        "RayExecutor()\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install 'lorakit[ray]'" in result.stderr
    assert ray_executor.RAY.places_jobs and issubclass(PluginError, Exception)


def test_capacity_counts_gpus_when_the_cluster_has_them():
    from lorakit.builtin.ray_executor import jobs_at_once

    assert jobs_at_once({"CPU": 8.0}, None) == 8
    assert jobs_at_once({"CPU": 8.0, "GPU": 4.0}, None) == 4
    assert jobs_at_once({"CPU": 8.0, "GPU": 4.0}, 2) == 2  # jobs of 2 GPUs: two at a time
    assert jobs_at_once({"CPU": 1.0, "GPU": 4.0}, 1) == 1  # each actor holds a CPU too
    assert jobs_at_once({"CPU": 8.0, "GPU": 4.0}, 0) == 8  # CPU jobs on a GPU cluster
    assert jobs_at_once({"CPU": 8.0, "GPU": 1.0}, 2) == 1  # never 0: a job too big is refused at start


DEAD_ACTOR = """
import json, sys, threading, time
from pathlib import Path
import ray
from lorakit import proctree
from lorakit.scheduling.queue import JobQueue
from lorakit.scheduling.scheduler import Scheduler
from lorakit.scheduling.submit import submit_config

out = Path(sys.argv[1])
queue = JobQueue(out)
for config in sys.argv[2:]:
    submit_config(queue, config)
# a local instance with 2 (declared) GPUs and room for one job at a time
scheduler = Scheduler(
    out, executor="ray", executor_options={"num_cpus": 1, "num_gpus": 2}, exit_when_done=True, poll_s=0.2
)
report = {}


def ranks(root):
    return [p for p in proctree.descendants(root) if b"torch.distributed" not in proctree.cmdline(p)
            and b"lorakit\\0train" in proctree.cmdline(p)]


def kill_the_long_job():
    while True:  # its actor started, its two ranks running: then the actor dies, as with a lost node
        active = [a for a in list(scheduler.active.values()) if a.job.exp_id == "ray_long"]
        if active and active[0].handle._started():
            break
        time.sleep(0.1)
    actor = active[0].handle._actor
    pid = ray.get(actor.pid.remote())
    while len(ranks(pid)) < 2:
        time.sleep(0.1)
    report["tree"] = [pid, *proctree.descendants(pid)]
    ray.kill(actor)


threading.Thread(target=kill_the_long_job, daemon=True).start()
report["code"] = scheduler.run()
report["left"] = proctree.wait_gone(report.get("tree", []), timeout=60)
report["jobs"] = {job.exp_id: [job.state, job.exit_code, job.notes] for job in JobQueue(out).jobs()}
print(json.dumps(report))
"""


def test_a_dead_ray_actor_fails_its_job_and_the_scheduler_goes_on(project, tmp_path: Path):  # noqa: F811
    """A 2-GPU job's actor dies mid-job: its launcher, torchrun and ranks die too, the job is failed with
    the reason, the next job runs, and a job asking for more GPUs than the cluster has is refused."""
    out = outputs(project)
    configs = []
    for name, gpus, epochs in (("ray_long", 2, 50), ("ray_short", 1, 1), ("ray_huge", 4, 1)):
        config = project(name, tasks=1, epochs=epochs, batch_size=8)
        config.write_text(
            config.read_text(encoding="utf-8") + f"[resources]\ngpus = {gpus}\n", encoding="utf-8"
        )
        configs.append(str(config))
    result = subprocess.run(
        [sys.executable, "-c", DEAD_ACTOR, str(out), *configs],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "RAY_DISABLE_USAGE_STATS": "1",
            "OMP_NUM_THREADS": "1",
            "LORAKIT_NO_PROGRESS": "1",
        },
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    jobs = report["jobs"]
    assert len(report.get("tree", [])) >= 4, result.stderr[-3000:]  # launcher, torchrun, two ranks
    assert report["left"] == []  # every process of the job died with its actor
    state, code, notes = jobs["ray_long"]
    assert (state, code) == ("failed", -9)
    assert "the Ray actor running this job died" in notes[-1]
    assert jobs["ray_short"][:2] == ["done", 0]  # the scheduler went on
    state, code, notes = jobs["ray_huge"]
    assert state == "failed" and "needs 4 GPUs; the Ray cluster has 2" in notes[-1]
