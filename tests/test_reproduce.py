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
    from lorakit.reproduce import next_id
    from lorakit.runs.layout import RunLayout

    assert next_id(RunLayout(outputs / "orig")) == "orig.repro2"  # the next one gets the next number
    # the name asked for, and --epochs-only: the first epoch alone, on the two-epoch schedule, so it
    # matches the original's first
    first = run_cli("reproduce", "orig", "--epochs-only", "1", "--as", "orig_e1", "--outputs", str(outputs))
    assert first.returncode == 0, first.stderr
    assert "orig_e1 and orig agree (tolerance 0)" in first.stdout and "epoch_2" not in first.stdout
    partial = json.loads((outputs / "orig_e1" / "metrics.json").read_text(encoding="utf-8"))
    assert not any(key.startswith("epoch_2") for key in partial)
    assert {k: v for k, v in partial["epoch_1"].items() if k != "epoch_seconds"} == {
        k: v for k, v in original["epoch_1"].items() if k != "epoch_seconds"
    }
    run = json.loads((outputs / "orig_e1" / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "completed" and "stopped after epoch 1 of 2" in run["notes"]


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


def test_the_frozen_config_keeps_references_as_written_and_travels_with_the_project(
    tmp_path: Path, tiny_bert: Path
):
    import hashlib
    import shutil

    import tomli_w

    from lorakit.testing import synthetic_frame

    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "data").mkdir()
    shutil.copytree(tiny_bert, project / "models" / "tiny_bert")
    synthetic_frame(80, seed=4).to_csv(project / "data" / "train.csv", index=False)
    config = {
        "exp_id": "moved",
        "data": {"raw_data_path": "../data/train.csv", "cache_dir": "../cache", "max_len": 32,
                 "label_column": "risk_level", "val_ratio": 0.25},
        "model": {"arch": "../models/tiny_bert", "lora": {"rank": 4, "alpha": 8}},
        "train": {"batch_size": 16, "epochs": 1, "lr": 5e-3},
    }  # fmt: skip
    (project / "configs" / "moved.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    trained = run_cli("train", "configs/moved.toml", "--outputs", "outputs", cwd=project)
    assert trained.returncode == 0, trained.stderr

    folder = project / "outputs" / "moved"
    copy = (folder / "config_copy.toml").read_text(encoding="utf-8")
    # relative references stay relative, re-based to the experiment folder; each is resolved and hashed above
    assert 'raw_data_path = "../../data/train.csv"' in copy and 'arch = "../../models/tiny_bert"' in copy
    data_sha = hashlib.sha256((project / "data" / "train.csv").read_bytes()).hexdigest()
    assert f"{project / 'data' / 'train.csv'} (sha256 {data_sha})" in copy
    refs = json.loads((folder / "run.json").read_text(encoding="utf-8"))["references"]
    assert refs["data.raw_data_path"] == {
        "written": "../data/train.csv",
        "resolved": str(project / "data" / "train.csv"),
        "sha256": data_sha,
    }
    assert refs["model.arch"]["written"] == "../models/tiny_bert" and len(refs["model.arch"]["sha256"]) == 64
    listed = run_cli("ls", "--table", "--outputs", "outputs", cwd=project)
    assert "tiny_bert" in listed.stdout and "../models" not in listed.stdout

    # the whole project moves elsewhere: reproduce finds the same model and data from the frozen copy
    moved = shutil.move(str(project), str(tmp_path / "elsewhere"))
    again = run_cli("reproduce", "moved", "--outputs", "outputs", cwd=Path(moved))
    assert again.returncode == 0, again.stderr
    assert "moved.repro1 and moved agree (tolerance 0)" in again.stdout and again.stderr == ""
    # rollback puts the config back in configs/ with its references re-based there
    (Path(moved) / "configs" / "moved.toml").unlink()
    assert run_cli("rollback", "--exp-id", "moved", "--outputs", "outputs", cwd=Path(moved)).returncode == 0
    restored = (Path(moved) / "configs" / "moved.toml").read_text(encoding="utf-8")
    assert 'raw_data_path = "../data/train.csv"' in restored and 'arch = "../models/tiny_bert"' in restored

    # other model files: a warning before training, not a refusal
    from lorakit.config.schema import load_config
    from lorakit.reproduce import model_lines
    from lorakit.runs.layout import RunLayout

    layout = RunLayout(Path(moved) / "outputs" / "moved")
    cfg, _ = load_config(layout.config_copy)
    assert model_lines(layout, cfg) == []
    (Path(moved) / "models" / "tiny_bert" / "extra.txt").write_text("changed", encoding="utf-8")
    (line,) = model_lines(layout, cfg)
    assert line.startswith(
        f"model.arch {Path(moved) / 'models' / 'tiny_bert'}: not the files it trained from"
    )
