"""``lorakit reproduce``: a retrain from the frozen config agrees epoch by epoch; changed data is refused."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli, train_tiny_in_subprocess


def _train(root: Path, tiny_bert: Path) -> Path:
    return train_tiny_in_subprocess(root, tiny_bert, "orig", epochs=2)


def test_reproduce_agrees_exactly_and_links_the_runs(tmp_path: Path, tiny_bert: Path):
    outputs = _train(tmp_path, tiny_bert)
    proc = run_cli("reproduce", "orig", "--outputs", str(outputs))
    assert proc.returncode == 0, proc.stderr
    assert "orig.repro1 and orig agree (tolerance 0)" in proc.stdout
    assert proc.stderr == ""  # same environment: no warning
    original = json.loads((outputs / "orig" / "metrics.json").read_text(encoding="utf-8"))
    again = json.loads((outputs / "orig.repro1" / "metrics.json").read_text(encoding="utf-8"))
    for epoch in ("epoch_1", "epoch_2"):
        strip = {k: v for k, v in original[epoch].items() if k != "epoch_seconds"}
        assert strip == {k: v for k, v in again[epoch].items() if k != "epoch_seconds"}
    run = json.loads((outputs / "orig.repro1" / "run.json").read_text(encoding="utf-8"))
    assert run["reproduces"] == "orig" and run["status"] == "completed"
    shown = run_cli("show", "orig.repro1", "--outputs", str(outputs))
    assert "reproduces      orig" in shown.stdout
    # the next one gets the next number, or the name asked for
    named = run_cli("reproduce", "orig", "--as", "orig_again", "--outputs", str(outputs))
    assert named.returncode == 0 and (outputs / "orig_again" / "run.json").is_file()


def test_changed_data_is_refused_naming_the_file_and_nothing_is_written(tmp_path: Path, tiny_bert: Path):
    outputs = _train(tmp_path, tiny_bert)
    data = tmp_path / "train.csv"
    lines = data.read_text(encoding="utf-8").splitlines()
    lines[5] = lines[5].replace("低风险", "高风险") if "低风险" in lines[5] else lines[5] + "。"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = sorted(p.name for p in outputs.iterdir())
    proc = run_cli("reproduce", "orig", "--outputs", str(outputs))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"Error: orig: the data no longer matches what it trained on: {data} (sha256 ")
    assert line.endswith("changed; nothing was trained")
    assert sorted(p.name for p in outputs.iterdir()) == before
