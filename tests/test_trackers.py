"""Trackers through the run-event hooks: the built-in TensorBoard event files, and a resume that an
installed plugin's option table does not refuse."""

from __future__ import annotations

import json
from pathlib import Path

import tomli_w
from battery_harness import lorakit
from test_battery_cli import install_plugin
from test_plugin_options import SCALED

from lorakit import Experiment
from lorakit.builtin.tensorboard import crc32c
from lorakit.testing import synthetic_frame


def _config(root: Path, tiny_bert: Path, exp_id: str, **train) -> dict:
    synthetic_frame(80, seed=4).to_csv(root / "train.csv", index=False)
    synthetic_frame(24, seed=5).to_csv(root / "test.csv", index=False)
    return {
        "exp_id": exp_id,
        "data": {"raw_data_path": str(root / "train.csv"), "test_data_path": str(root / "test.csv"),
                 "cache_dir": str(root / "cache"), "max_len": 32, "label_column": "risk_level",
                 "val_ratio": 0.25},
        "model": {"arch": str(tiny_bert), "lora": {"rank": 4, "alpha": 8}},
        "train": {"batch_size": 16, "epochs": 2, "lr": 5e-3, **train},
    }  # fmt: skip


def test_crc32c_is_castagnoli():
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C


def test_tensorboard_event_files_hold_each_epochs_metrics_and_the_tests(tmp_path: Path, tiny_bert: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    outputs = tmp_path / "outputs"
    Experiment(_config(tmp_path, tiny_bert, "tb", tensorboard=True), outputs=outputs).run(echo=False)
    folder = outputs / "tb"
    (events,) = (folder / "tensorboard").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    scalars = accumulator.Tags()["scalars"]
    assert {"avg_f1", "risk_level_f1", "train_loss", "test/avg_f1"} <= set(scalars)
    got = [(e.step, e.value) for e in accumulator.Scalars("avg_f1")]
    assert [step for step, _ in got] == [1, 2]
    for step, value in got:
        assert abs(value - metrics[f"epoch_{step}"]["avg_f1"]) < 1e-6  # stored as float32
    (test,) = accumulator.Scalars("test/avg_f1")
    assert abs(test.value - metrics["test"]["avg_f1"]) < 1e-6
    # off by default: no folder
    Experiment(_config(tmp_path, tiny_bert, "plain", epochs=1), outputs=outputs).run(echo=False)
    assert not (outputs / "plain" / "tensorboard").exists()


def test_installing_a_plugin_with_an_option_table_does_not_stop_a_resume(tmp_path: Path, tiny_bert: Path):
    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(_config(tmp_path, tiny_bert, "resumable", epochs=1)), encoding="utf-8")
    outputs = tmp_path / "outputs"
    first = lorakit("train", str(config), "--outputs", str(outputs))
    assert first.code == 0, first
    # the run stopped (as if killed) ...
    run_json = outputs / "resumable" / "run.json"
    run = json.loads(run_json.read_text(encoding="utf-8"))
    run["status"] = "failed"
    run_json.write_text(json.dumps(run), encoding="utf-8")
    # ... and a plugin package bringing a [model.scaled] table was installed meanwhile
    site = install_plugin(tmp_path / "site", "scaled", SCALED)
    shown = lorakit("config", "show", str(config), path=[site])
    assert "[model.scaled]" in shown.out  # its table is in every config now, with its defaults
    resumed = lorakit("train", str(config), "--outputs", str(outputs), "--resume", path=[site])
    assert resumed.code == 0, resumed
    assert "config changed" not in resumed.err
    assert json.loads(run_json.read_text(encoding="utf-8"))["status"] == "completed"
