"""configs/exp_v5_tri_label.toml: three label columns on the built-in N-label path, trained small."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit import Experiment
from lorakit.runs.index import ExperimentIndex
from lorakit.testing import tiny_overrides

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "exp_v5_tri_label.toml"
TASKS = {
    "risk_level": ["低风险", "中风险", "高风险"],
    "is_adopt": ["采纳", "不采纳"],
    "channel": ["线上", "线下"],
}


def small(arch: Path, tmp_path: Path, epochs: int = 2) -> list[str]:
    """The shipped config's data, labels and loss weights, on a tiny model."""
    return tiny_overrides(arch, tmp_path / "cache", epochs=epochs)


def test_tri_label_config_trains_three_tasks(tiny_bert: Path, tmp_path: Path, builtin_plugins):
    outputs = tmp_path / "outputs"
    experiment = Experiment(CONFIG, small(tiny_bert, tmp_path), outputs=outputs)
    assert experiment.config.task_columns == list(TASKS)

    result = experiment.run(echo=False)
    folder = result.output_dir
    assert folder == outputs / "exp_v5_tri_label"

    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "completed"
    assert run["task_type"] == "multi_cls"

    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics) == {"epoch_1", "epoch_2", "best"}
    for task in TASKS:
        for epoch in ("epoch_1", "epoch_2", "best"):
            assert 0 <= metrics[epoch][f"{task}_accuracy"] <= 1, (epoch, task)
            assert 0 <= metrics[epoch][f"{task}_f1"] <= 1, (epoch, task)
    assert metrics["best"]["avg_f1"] == pytest.approx(sum(metrics["best"][f"{t}_f1"] for t in TASKS) / 3)

    label_map = json.loads((folder / "label_map.json").read_text(encoding="utf-8"))
    assert {task: info["labels"] for task, info in label_map["tasks"].items()} == TASKS

    heads = json.loads((folder / "lora_adapter" / "heads.json").read_text(encoding="utf-8"))
    assert [(t["name"], t["num_labels"], t["head"]) for t in heads["tasks"]] == [
        ("risk_level", 3, "linear"),
        ("is_adopt", 2, "linear"),
        ("channel", 2, "linear"),
    ]
    assert ExperimentIndex(outputs).entries()["exp_v5_tri_label"]["task_type"] == "multi_cls"

    (row,) = Experiment.load("exp_v5_tri_label", outputs=outputs).predict(
        ["该客户还款按时，建议通过，网页申请。"]
    )
    assert set(row) == set(TASKS)
    for task, labels in TASKS.items():
        assert list(row[task]["probabilities"]) == labels
        assert sum(row[task]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
