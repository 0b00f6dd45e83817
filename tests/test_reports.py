"""Per-class reports and confusion matrices (reports.json), ``show`` and ``show --plot``, and the test split's
and per-class figures as index keys (``--sort-by test.avg_f1``, ``--filter 'risk_level.高风险_f1>=0'``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from lorakit import Experiment
from lorakit.testing import synthetic_frame

TASKS = {"risk_level": ["低风险", "中风险", "高风险"], "is_adopt": ["采纳", "不采纳"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert: Path):
    """Two tiny double-label runs with a test split."""
    root = tmp_path_factory.mktemp("reports")
    synthetic_frame(120, seed=5).to_csv(root / "train.csv", index=False)
    synthetic_frame(40, seed=6).to_csv(root / "test.csv", index=False)
    for name, lr in (("r_slow", 1e-4), ("r_fast", 5e-3)):
        config = {
            "exp_id": name,
            "data": {"raw_data_path": str(root / "train.csv"), "test_data_path": str(root / "test.csv"),
                     "cache_dir": str(root / "cache"), "max_len": 32, "val_ratio": 0.25, "label_subset": TASKS},
            "model": {"arch": str(tiny_bert), "lora": {"rank": 4, "alpha": 8}},
            "train": {"batch_size": 16, "lr": lr, "epochs": 2},
        }  # fmt: skip
        Experiment(config, outputs=root / "outputs").run(echo=False)
    return root / "outputs"


def test_reports_add_up_to_the_splits_and_agree_with_the_metrics(runs: Path):
    folder = runs / "r_fast"
    reports = json.loads((folder / "reports.json").read_text(encoding="utf-8"))
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    sizes = json.loads((folder / "run.json").read_text(encoding="utf-8"))["data_stats"]["split_sizes"]
    assert set(reports) == {"epoch_1", "epoch_2", "best", "test"}
    assert reports["best"]["epoch"] == metrics["best"]["epoch"]
    for key, split in (("epoch_1", "val"), ("epoch_2", "val"), ("test", "test")):
        for task, labels in TASKS.items():
            report = reports[key]["tasks"][task]
            assert report["labels"] == labels  # in id order
            matrix = report["confusion"]
            assert len(matrix) == len(labels) and all(len(row) == len(labels) for row in matrix)
            assert sum(map(sum, matrix)) == sizes[split]
            classes = report["classes"]
            assert [classes[label]["support"] for label in labels] == [sum(row) for row in matrix]
            # the macro F1 of metrics.json is the mean of the per-class F1s
            scored = metrics[key] if key != "test" else metrics["test"]
            mean = sum(c["f1"] for c in classes.values()) / len(classes)
            assert mean == pytest.approx(scored[f"{task}_f1"], abs=1e-9)


def test_show_prints_the_best_confusion_matrix_and_plot_writes_a_png(runs: Path):
    import matplotlib.image

    shown = run_cli("show", "r_fast", "--outputs", str(runs), "--plot")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "Per class (best epoch" in text and "rows true, columns predicted" in text
    header = next(line for line in text.splitlines() if line.strip().startswith("risk_level "))
    assert header.split() == ["risk_level", "低风险", "中风险", "高风险"]
    assert "worst: " in text and "support " in text
    png = runs / "r_fast" / "report.png"
    assert f"Wrote {png}" in text
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 200 and image.shape[1] > 600  # three panels side by side


def test_test_metrics_and_per_class_figures_are_index_keys(runs: Path):
    ranked = run_cli("compare", "--outputs", str(runs), "--sort-by", "test.avg_f1", "--format", "json")
    assert ranked.returncode == 0, ranked.stderr
    rows = json.loads(ranked.stdout)
    assert {row["exp_id"] for row in rows} == {"r_slow", "r_fast"}
    scores = [row["test.avg_f1"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:
        metrics = json.loads((runs / row["exp_id"] / "metrics.json").read_text(encoding="utf-8"))
        assert row["test.avg_f1"] == metrics["test"]["avg_f1"]

    def best_f1(name: str) -> float:
        reports = json.loads((runs / name / "reports.json").read_text(encoding="utf-8"))
        return reports["best"]["tasks"]["risk_level"]["classes"]["高风险"]["f1"]

    cut = max(best_f1("r_slow"), best_f1("r_fast"))
    listed = run_cli("ls", "--outputs", str(runs), "--filter", f"risk_level.高风险_f1>={cut}", "--json")
    assert listed.returncode == 0, listed.stderr
    expected = {n for n in ("r_slow", "r_fast") if best_f1(n) >= cut}
    assert {row["exp_id"] for row in json.loads(listed.stdout)} == expected
    test_key = run_cli("ls", "--outputs", str(runs), "--filter", "test.is_adopt.不采纳_f1>=0", "--json")
    assert test_key.returncode == 0 and len(json.loads(test_key.stdout)) == 2
    typo = run_cli("ls", "--outputs", str(runs), "--filter", "test.avg_f2>0")
    assert typo.returncode == 2 and "(did you mean test.avg_f1?)" in typo.stderr
