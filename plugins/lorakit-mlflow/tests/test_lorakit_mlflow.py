"""lorakit-mlflow, installed: a tiny BERT run through the real ``lorakit train`` read back with MLflow's own
client; a tracker that fails (the run still completes, train.log says why); ``LORAKIT_MLFLOW=0``; a resumed
run continuing its MLflow run; the bounded wait at run end.

Runs where the package is installed (``nox -s plugins``); fixtures come from ``lorakit.testing``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import lorakit_mlflow
import pytest
from mlflow.tracking import MlflowClient

VERSION = importlib.metadata.version("lorakit-mlflow")
RISK = ["低风险", "中风险", "高风险"]
MLFLOW_ENV = (
    "LORAKIT_MLFLOW",
    "LORAKIT_MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_URI",
    "LORAKIT_MLFLOW_EXPERIMENT",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)


def lorakit(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The real ``lorakit`` command, loading plugins from entry points like a user's shell would."""
    base = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    return subprocess.run(
        [sys.executable, "-m", "lorakit", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**base, "LORAKIT_NO_PROGRESS": "1", **env},
    )


@pytest.fixture
def train(tmp_path: Path, tiny_bert: Path):
    """``train(name, **env)``: a 2-epoch run on 100 synthetic rows (with a test split) in ``tmp_path/outputs``."""
    from lorakit.testing import synthetic_frame

    synthetic_frame(100, seed=3).to_csv(tmp_path / "train.csv", index=False)
    outputs = tmp_path / "outputs"

    def run(name: str, **env: str) -> Path:
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'exp_id = "{name}"\n[data]\nraw_data_path = "train.csv"\n'
            f'cache_dir = "{(tmp_path / "cache").as_posix()}"\nmax_len = 32\nval_ratio = 0.2\ntest_ratio = 0.2\n'
            f'label_column = "risk_level"\nlabel_subset = {json.dumps(RISK, ensure_ascii=False)}\n'
            f'[model]\narch = "{tiny_bert.as_posix()}"\n[model.lora]\nrank = 4\nalpha = 8\n'
            "[train]\nbatch_size = 32\nlr = 5e-3\nepochs = 2\n",
            encoding="utf-8",
        )
        proc = lorakit("train", str(config), "--outputs", str(outputs), **env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads((outputs / name / "run.json").read_text(encoding="utf-8"))["status"] == "completed"
        return outputs / name

    return run


def test_plugins_json_lists_the_package_with_its_version():
    proc = lorakit("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout) if r["name"] == "mlflow"]
    assert row["distribution"] == "lorakit-mlflow" and row["version"] == VERSION
    assert row["hooks"] == ["lorakit_on_epoch_end", "lorakit_on_run_end", "lorakit_on_run_start"]


def test_a_run_is_logged_to_the_local_store_beside_the_experiments(train):
    folder = train("tiny_tracked")
    outputs = folder.parent
    client = MlflowClient(f"sqlite:///{(outputs / 'mlflow.db').as_posix()}")
    experiment = client.get_experiment_by_name("lorakit")
    assert experiment.artifact_location == (outputs / "mlruns").as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    saved = json.loads((folder / "mlflow_run.json").read_text(encoding="utf-8"))
    assert run.info.run_id == saved["run_id"]
    assert run.info.run_name == "tiny_tracked" and run.data.tags["lorakit.exp_id"] == "tiny_tracked"
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["exp_id"] == "tiny_tracked" and float(params["train.lr"]) == 5e-3
    assert params["model.lora.rank"] == "4"
    assert json.loads(params["data.label_subset"]) == RISK

    history = client.get_metric_history(run.info.run_id, "avg_f1")
    assert sorted(m.step for m in history) == [1, 2]
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert {m.step: m.value for m in history} == pytest.approx(
        {1: metrics["epoch_1"]["avg_f1"], 2: metrics["epoch_2"]["avg_f1"]}
    )
    assert run.data.metrics["test.avg_f1"] == pytest.approx(metrics["test"]["avg_f1"])
    assert run.data.metrics["best.epoch"] == metrics["best"]["epoch"]

    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "run.json", "config_copy.toml", "train.log", "lora_adapter"} <= top
    assert "checkpoints" not in top and "mlflow_run.json" not in top
    adapter = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "lora_adapter")}
    assert "adapter_model.safetensors" in adapter
    assert (outputs / "mlruns").is_dir() and not (Path.cwd() / "mlruns").exists()


def test_a_failing_tracker_is_a_warning_in_train_log_and_the_run_completes(train):
    folder = train("tiny_broken", LORAKIT_MLFLOW_TRACKING_URI="nosuchscheme://nowhere")
    log = (folder / "train.log").read_text(encoding="utf-8")
    (line,) = [line for line in log.splitlines() if "WARNING" in line and '"mlflow"' in line]
    assert 'plugin "mlflow": could not start an MLflow run for tiny_broken at nosuchscheme://nowhere' in line
    assert not (folder / "mlflow_run.json").exists()


def test_lorakit_mlflow_0_logs_nothing(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LORAKIT_MLFLOW", "0")
    folder = tmp_path / "outputs" / "untracked"
    folder.mkdir(parents=True)
    lorakit_mlflow.lorakit_on_run_start("untracked", {"train": {"lr": 0.1}}, str(folder))
    lorakit_mlflow.lorakit_on_epoch_end("untracked", 1, {"avg_f1": 0.5})
    lorakit_mlflow.lorakit_on_run_end("untracked", "completed", {}, str(folder))
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == [
        "outputs",
        "outputs/untracked",
    ]


def test_a_resumed_run_continues_its_mlflow_run(tmp_path: Path):
    # the hooks as lorakit calls them for a run preempted after epoch 1 and resumed with --resume
    folder = tmp_path / "outputs" / "resumed"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}", encoding="utf-8")
    config = {"exp_id": "resumed", "train": {"lr": 0.001, "epochs": 2}}
    lorakit_mlflow.lorakit_on_run_start("resumed", config, str(folder))
    lorakit_mlflow.lorakit_on_epoch_end("resumed", 1, {"avg_f1": 0.25, "train_loss": 1.0})
    lorakit_mlflow.lorakit_on_run_end("resumed", "preempted", {"epoch_1": {}}, str(folder))
    client = MlflowClient(f"sqlite:///{(tmp_path / 'outputs' / 'mlflow.db').as_posix()}")
    (first,) = client.search_runs([client.get_experiment_by_name("lorakit").experiment_id])
    assert first.info.status == "KILLED"

    lorakit_mlflow.lorakit_on_run_start("resumed", config, str(folder))
    lorakit_mlflow.lorakit_on_epoch_end("resumed", 2, {"avg_f1": 0.5, "train_loss": 0.5})
    metrics = {"epoch_1": {}, "epoch_2": {}, "test": {"avg_f1": 0.4, "note": "x"}}
    lorakit_mlflow.lorakit_on_run_end("resumed", "completed", metrics, str(folder))
    (run,) = client.search_runs([client.get_experiment_by_name("lorakit").experiment_id])
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "avg_f1")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.5)]
    assert run.data.metrics["test.avg_f1"] == 0.4 and "test.note" not in run.data.metrics
    assert run.data.params["train.lr"] == "0.001"


def test_run_end_waits_a_bounded_time_and_names_what_was_not_logged(monkeypatch, caplog):
    gate = threading.Event()
    monkeypatch.setattr(lorakit_mlflow, "_tracker", Stuck(gate))
    monkeypatch.setenv("LORAKIT_MLFLOW_TIMEOUT", "0.2")
    with caplog.at_level(logging.WARNING, logger="lorakit.train.mlflow"):
        lorakit_mlflow.lorakit_on_run_start("slow", {}, "unused")
        lorakit_mlflow.lorakit_on_epoch_end("slow", 1, {"avg_f1": 0.5})
        lorakit_mlflow.lorakit_on_run_end("slow", "completed", {}, "unused")
    gate.set()
    assert lorakit_mlflow._worker.drain(5) == []
    (message,) = caplog.messages
    assert message.startswith('plugin "mlflow": MLflow did not answer within 0.2 s')
    assert message.endswith(
        "not logged: the start of slow, epoch 1 metrics, the test and best metrics, the status FINISHED, "
        "the artifacts"
    )


class Stuck:
    """A tracker whose start blocks until ``gate`` is set (an MLflow server that does not answer)."""

    def __init__(self, gate: threading.Event):
        self.gate = gate

    def start(self, *args: object) -> None:
        self.gate.wait(10)

    def metrics(self, *args: object) -> None:
        pass

    artifacts = end = metrics
