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


DEAD_ACTOR = """
import json, os, signal, sys, time
from lorakit.builtin.ray_executor import RayExecutor
from lorakit.proctree import wait_gone
from lorakit.scheduling.executor import LaunchSpec

executor = RayExecutor(num_cpus=1)
spec = LaunchSpec(job_id=1, name="sleeper", argv=("sh", "-c", "sleep 120"), env={}, cwd=None,
                  log_path=sys.argv[1])
handle = executor.start(spec)
while handle.poll() is None and not handle._started():
    time.sleep(0.1)
import ray
job_pid = ray.get(handle._actor.pid.remote())
ray.kill(handle._actor)  # the actor dies as with a lost node
handle.signal(signal.SIGUSR1)  # must not raise
code = handle.wait(timeout=30)
print(json.dumps({"code": code, "left": wait_gone([job_pid], timeout=15), "capacity": executor.capacity()}))
executor.close()
"""


def test_a_dead_ray_actor_fails_its_job_without_crashing_or_leaving_it_running(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-c", DEAD_ACTOR, str(tmp_path / "job.log")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_DISABLE_USAGE_STATS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == -9  # reported like a killed process: the scheduler records a failure
    assert report["left"] == []  # the job's process died with its actor
    assert report["capacity"] == 1
