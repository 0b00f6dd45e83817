"""The environment snapshot (requirements.lock) and ``lorakit env diff``."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, train_tiny_in_subprocess

from lorakit.runs import environment


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert: Path) -> Path:
    return train_tiny_in_subprocess(tmp_path_factory.mktemp("env"), tiny_bert, "snap")


def test_the_lock_lists_every_installed_distribution_and_the_hardware(trained: Path):
    text = (trained / "snap" / "requirements.lock").read_text(encoding="utf-8")
    packages, facts = environment.parse_lock(text)
    assert packages["torch"] == importlib.metadata.version("torch")
    assert packages["lorakit"] == importlib.metadata.version("lorakit")
    # what pip freeze would list, all of it (not nine), as a fresh process sees it
    code = "import json; from lorakit.runs.environment import installed; print(json.dumps(installed()))"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert packages == json.loads(fresh.stdout)
    assert len(packages) > 50
    assert facts["python"] and facts["cpu"] and facts["gpus"] == "none"
    # a file pip accepts: comments and name==version lines only
    for line in text.splitlines():
        assert line.startswith("#") or line.count("==") == 1, line


def test_env_diff_is_empty_against_the_same_environment(trained: Path):
    proc = run_cli("env", "diff", "snap", "--outputs", str(trained))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_env_diff_lists_exactly_what_changed(trained: Path):
    other = trained / "snap_other"
    shutil.copytree(trained / "snap", other)
    lock = other / "requirements.lock"
    numpy = importlib.metadata.version("numpy")
    lines = lock.read_text(encoding="utf-8").splitlines()
    lines = [("numpy==0.0.1" if line == f"numpy=={numpy}" else line) for line in lines]
    lines = [line for line in lines if not line.startswith("tabulate==")] + ["left-pad==1.0"]
    lock.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_cli("env", "diff", "snap", "snap_other", "--outputs", str(trained))
    assert proc.returncode == 1, proc.stderr
    tabulate = importlib.metadata.version("tabulate")
    assert proc.stdout.splitlines() == [
        "+ left-pad==1.0",
        f"- tabulate=={tabulate}",
        f"~ numpy: {numpy} -> 0.0.1",
    ]


def test_env_diff_of_an_experiment_without_a_lock_says_so(trained: Path):
    old = trained / "snap_old"
    shutil.copytree(trained / "snap", old)
    (old / "requirements.lock").unlink()
    proc = run_cli("env", "diff", "snap_old", "--outputs", str(trained))
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        "snap_old: no requirements.lock (trained before lorakit recorded the environment)"
    )
