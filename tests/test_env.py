"""The environment snapshot (requirements.lock) and ``lorakit env diff``."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from lorakit import Experiment
from lorakit.runs import environment
from lorakit.testing import synthetic_frame


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("env")
    synthetic_frame(80, seed=2).to_csv(root / "train.csv", index=False)
    config = {
        "exp_id": "snap",
        "data": {"raw_data_path": str(root / "train.csv"), "cache_dir": str(root / "cache"), "max_len": 32,
                 "label_column": "risk_level", "val_ratio": 0.25},
        "model": {"arch": str(tiny_bert), "lora": {"rank": 4, "alpha": 8}},
        "train": {"batch_size": 16, "epochs": 1},
    }  # fmt: skip
    Experiment(config, outputs=root / "outputs").run(echo=False)
    return root / "outputs"


def test_the_lock_lists_every_installed_distribution_and_the_hardware(trained: Path):
    text = (trained / "snap" / "requirements.lock").read_text(encoding="utf-8")
    packages, facts = environment.parse_lock(text)
    assert packages["torch"] == importlib.metadata.version("torch")
    assert packages["lorakit"] == importlib.metadata.version("lorakit")
    assert packages == environment.installed()  # what pip freeze would list: all of it, not nine
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
