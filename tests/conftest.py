"""Shared fixtures. Plugin-author fixtures (tiny models, fresh managers) come from lorakit.testing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Runs in tests measure the matmul peak into a cache of the test session's own, never the user's
    (a peak measured on a machine busy with tests would stay in the user's cache as too low)."""
    import os
    import tempfile

    if "LORAKIT_PEAK_CACHE" not in os.environ:
        folder = tempfile.mkdtemp(prefix="lorakit-tests-peak-")
        os.environ["LORAKIT_PEAK_CACHE"] = str(Path(folder) / "peak.json")


@pytest.fixture
def repo() -> Path:
    return REPO


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run the real ``lorakit`` command in a subprocess."""
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lorakit", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def label_map_file(tmp_path: Path) -> Path:
    path = tmp_path / "global_label_map.json"
    labels = ["低风险", "中风险", "高风险", "采纳", "不采纳"]
    path.write_text(
        json.dumps({label: i for i, label in enumerate(labels)}, ensure_ascii=False), encoding="utf-8"
    )
    return path


def train_tiny_in_subprocess(root: Path, tiny_bert: Path, exp_id: str, *, epochs: int = 1) -> Path:
    """Train a tiny single-label experiment with the real ``lorakit train`` in a process of its own (as
    users train: this test process's sys.path may hold the plugin packages' source folders, which
    importlib.metadata would list as installed); returns the outputs folder."""
    import tomli_w

    from lorakit.testing import synthetic_frame

    synthetic_frame(80, seed=4).to_csv(root / "train.csv", index=False)
    config = {
        "exp_id": exp_id,
        "data": {"raw_data_path": str(root / "train.csv"), "cache_dir": str(root / "cache"), "max_len": 32,
                 "label_column": "risk_level", "val_ratio": 0.25},
        "model": {"arch": str(tiny_bert), "lora": {"rank": 4, "alpha": 8}},
        "train": {"batch_size": 16, "epochs": epochs, "lr": 5e-3},
    }  # fmt: skip
    (root / f"{exp_id}.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    proc = run_cli("train", str(root / f"{exp_id}.toml"), "--outputs", str(root / "outputs"))
    assert proc.returncode == 0, proc.stderr
    return root / "outputs"
