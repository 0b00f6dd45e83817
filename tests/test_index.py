"""The experiment index: entries from folders, concurrent syncs, rebuild of a lost or corrupt index,
the active pointer surviving a rebuild.

``make_experiment`` writes a fake experiment folder in the trainer's format; test_browse.py uses it too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from lorakit.runs.index import (
    ACTIVE_FILE,
    ExperimentFolderError,
    ExperimentIndex,
    ExperimentNotFound,
    IndexWarning,
    entry_from_folder,
)

RISK = ["低风险", "中风险", "高风险"]
ADOPT = ["采纳", "不采纳"]


def make_experiment(
    outputs: Path,
    exp_id: str,
    *,
    tasks: dict[str, list[str]] | None = None,
    status: str = "completed",
    lr: float = 2e-5,
    rank: int = 16,
    batch_size: int = 32,
    model: str = "bert-base-chinese",
    f1s: list[float] | None = None,
    create_time: str = "2024-05-20 14:30:00",
    device: str = "GPU-0",
    seed: int = 42,
    extra_config: str = "",
    headline: str = "avg_f1",
) -> Path:
    """Write ``outputs/<exp_id>/`` as the trainer does: run.json, metrics.json, config_copy.toml,
    label_map.json, env_info.json. ``f1s`` is avg_f1 per finished epoch."""
    tasks = {"risk_level": RISK} if tasks is None else tasks
    f1s = [0.71, 0.84, 0.9] if f1s is None else f1s
    task_type = ("single_cls", "double_cls", "multi_cls")[min(len(tasks), 3) - 1]
    folder = outputs / exp_id
    folder.mkdir(parents=True, exist_ok=True)

    metrics: dict[str, Any] = {}
    for epoch, f1 in enumerate(f1s, start=1):
        values: dict[str, Any] = {}
        for i, task in enumerate(tasks):
            values[f"{task}_accuracy"] = round(f1 + 0.02 + i / 100, 4)
            values[f"{task}_f1"] = round(f1 - i / 100, 4)
        values["avg_f1"] = f1
        if len(tasks) == 1:
            values["accuracy"], values["f1"] = values[f"{next(iter(tasks))}_accuracy"], f1
        values["train_loss"] = round(1.5 - f1, 4)
        metrics[f"epoch_{epoch}"] = values
    if f1s:
        best_epoch = max(range(len(f1s)), key=lambda i: f1s[i]) + 1
        metrics["best"] = {"epoch": best_epoch, **metrics[f"epoch_{best_epoch}"]}

    loss_weight = [round(1 / len(tasks), 2)] * len(tasks) if len(tasks) > 1 else None
    run = {
        "exp_id": exp_id,
        "status": status,
        "create_time": create_time,
        "end_time": None if status == "running" else create_time[:11] + "16:00:00",
        "task_type": task_type,
        "tasks": tasks,
        "base_config": "templates/bert_lora_template.toml",
        "config_path": f"/work/configs/{exp_id}.toml",
        "key_params": {
            "model": model,
            "backbone": "bert",
            "method": "lora",
            "lora_rank": rank,
            "lora_alpha": rank * 2,
            "lr": lr,
            "batch_size": batch_size,
            "epochs": 3,
            "max_len": 128,
            "loss_weight": loss_weight,
        },
        "headline_metric": headline,
        "device_used": device,
        "env_version": "torch==2.13.0, transformers==4.46.0, peft==0.13.0",
        "error": "CUDA out of memory" if status == "failed" else None,
        "notes": [],
    }
    if len(tasks) == 1:
        subset = "label_subset = " + json.dumps(next(iter(tasks.values())), ensure_ascii=False)
    else:
        subset = "[data.label_subset]\n" + "\n".join(
            f"{task} = {json.dumps(labels, ensure_ascii=False)}" for task, labels in tasks.items()
        )
    weight = f"loss_weight = {json.dumps(loss_weight)}\n" if loss_weight else ""
    config = textwrap.dedent(
        f"""\
        exp_id = "{exp_id}"
        description = "fake experiment {exp_id}"
        base_config = "templates/bert_lora_template.toml"
        task_type = "{task_type}"
        seed = {seed}
        """
    ) + (
        f'{extra_config}\n[data]\nraw_data_path = "/data/raw/train.csv"\nmax_len = 128\n{subset}\n'
        f'\n[model]\narch = "{model}"\n\n[model.lora]\nrank = {rank}\nalpha = {rank * 2}\n'
        f"\n[train]\nbatch_size = {batch_size}\nlr = {lr!r}\nepochs = 3\n{weight}"
    )
    label_map = {
        "task_type": task_type,
        "tasks": {
            task: {"labels": labels, "global_ids": list(range(len(labels)))} for task, labels in tasks.items()
        },
    }
    env = {
        "python": "3.11.7",
        "packages": {"torch": "2.13.0", "transformers": "4.46.0", "peft": "0.13.0", "lorakit": "0.1.0"},
        "plugins": {"lorakit-roberta": "0.1.0"},
        "device": "cpu" if device == "cpu" else "cuda:0",
        "peak_memory_mb": 2048.0,
        "git_commit": "abc1234",
    }
    files = {
        "run.json": json.dumps(run, ensure_ascii=False, indent=2),
        "metrics.json": json.dumps(metrics, indent=2),
        "config_copy.toml": config,
        "label_map.json": json.dumps(label_map, ensure_ascii=False, indent=2),
        "env_info.json": json.dumps(env, indent=2),
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_entry_has_the_seed_shape(tmp_path: Path):
    folder = make_experiment(tmp_path, "exp_v4_double_label", tasks={"risk_level": RISK, "is_adopt": ADOPT})
    entry = entry_from_folder(folder)
    assert {
        "create_time",
        "task_type",
        "base_config",
        "key_params",
        "best_metrics",
        "output_path",
        "device_used",
        "env_version",
        "status",
        "tasks",
        "headline",
        "end_time",
    } <= set(entry)
    assert entry["task_type"] == "double_cls" and entry["status"] == "completed"
    assert entry["tasks"] == {"risk_level": RISK, "is_adopt": ADOPT}
    assert entry["best_metrics"]["avg_f1"] == 0.9 and "epoch" not in entry["best_metrics"]
    assert entry["best_epoch"] == 3 and entry["headline"] == "avg_f1"
    assert entry["key_params"]["lora_rank"] == 16 and entry["output_path"] == str(folder.resolve())


def test_entry_of_a_run_that_just_started(tmp_path: Path):
    folder = make_experiment(tmp_path, "fresh", status="running", f1s=[])
    (folder / "metrics.json").unlink()
    entry = entry_from_folder(folder)
    assert entry["best_metrics"] == {} and entry["best_epoch"] is None and entry["status"] == "running"
    with pytest.raises(ExperimentFolderError):
        entry_from_folder(tmp_path / "nope")


def test_sync_writes_chinese_readable_and_shape(tmp_path: Path):
    make_experiment(tmp_path, "a")
    index = ExperimentIndex(tmp_path)
    index.sync("a")
    text = index.path.read_text(encoding="utf-8")
    assert "低风险" in text  # not \\u-escaped
    data = json.loads(text)
    assert set(data) == {"experiments", "active"}
    assert data["active"] == {"exp_id": None, "history": []}
    assert index.entries()["a"]["status"] == "completed" and index.active() is None


def test_index_is_readable_by_the_team(tmp_path: Path):
    import os
    import stat

    make_experiment(tmp_path, "a")
    index = ExperimentIndex(tmp_path)
    index.sync("a")
    index.set_active("a")
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (index.path, tmp_path / ACTIVE_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    index.path.chmod(0o640)
    index.sync("a")
    assert stat.S_IMODE(index.path.stat().st_mode) == 0o640  # an existing file keeps its mode


def test_outputs_env_var(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LORAKIT_OUTPUTS", str(tmp_path))
    assert ExperimentIndex().path == tmp_path.resolve() / "experiment_index.json"


_WORKER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_index import make_experiment
from lorakit.runs.index import ExperimentIndex

outputs, worker = Path(sys.argv[1]), int(sys.argv[2])
index = ExperimentIndex(outputs)
for i in range(50):
    exp_id = f"w{{worker}}_e{{i:02d}}"
    make_experiment(outputs, exp_id, f1s=[0.5, 0.6 + i / 1000])
    index.sync(exp_id)
"""

_READER = """
import json, sys, time
from pathlib import Path

path, stop = Path(sys.argv[1]), Path(sys.argv[2])
reads = 0
while not stop.exists():
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        continue
    json.loads(text)  # a partial file raises here and the reader exits non-zero
    reads += 1
    time.sleep(0.001)  # leave the CPU to the writers
print(reads)
"""


def test_eight_processes_fifty_syncs_each_lose_nothing(tmp_path: Path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    index = ExperimentIndex(outputs)
    stop = tmp_path / "stop"
    tests_dir = str(Path(__file__).parent)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(index.path), str(stop)], stdout=subprocess.PIPE, text=True
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER.format(tests=tests_dir), str(outputs), str(w)])
        for w in range(8)
    ]
    codes = [w.wait(timeout=120) for w in workers]
    stop.touch()
    reads, _ = reader.communicate(timeout=30)
    assert codes == [0] * 8
    assert reader.returncode == 0, "a reader saw partial JSON"
    assert int(reads) > 0
    entries = json.loads(index.path.read_text(encoding="utf-8"))["experiments"]
    assert len(entries) == 400
    assert entries["w7_e49"]["best_metrics"]["avg_f1"] == pytest.approx(0.649)
    assert not list(outputs.glob(".experiment_index.json.*.tmp"))


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "wrong shape"])
def test_missing_or_corrupt_index_is_rebuilt_with_a_warning(tmp_path: Path, damage: str):
    for i in range(3):
        make_experiment(tmp_path, f"exp_{i}", lr=1e-5 * (i + 1))
    index = ExperimentIndex(tmp_path)
    for i in range(3):
        index.sync(f"exp_{i}")
    before = index.entries()
    text = index.path.read_text(encoding="utf-8")
    if damage == "delete":
        index.path.unlink()
    elif damage == "truncate":
        index.path.write_text(text[: len(text) // 2], encoding="utf-8")
    elif damage == "garbage":
        index.path.write_bytes(b"\x00\xff not json")
    else:
        index.path.write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.warns(IndexWarning, match="rebuilt from 3 experiment folder"):
        after = index.entries()
    assert after == before
    assert json.loads(index.path.read_text(encoding="utf-8"))["experiments"] == before  # written back


def test_sync_repairs_a_corrupt_index(tmp_path: Path):
    make_experiment(tmp_path, "a")
    make_experiment(tmp_path, "b")
    index = ExperimentIndex(tmp_path)
    index.path.write_text('{"experiments": {"a": ', encoding="utf-8")
    with pytest.warns(IndexWarning):
        index.sync("b")
    assert set(index.entries()) == {"a", "b"}


def test_empty_outputs_gives_no_warning_and_writes_nothing(tmp_path: Path, recwarn):
    index = ExperimentIndex(tmp_path / "none")
    assert index.entries() == {} and index.active() is None
    assert not (tmp_path / "none").exists()
    assert not [w for w in recwarn if issubclass(w.category, IndexWarning)]


def test_unwritable_outputs_still_lists_from_the_folders(tmp_path: Path, monkeypatch):
    import lorakit.runs.index as index_module

    make_experiment(tmp_path, "a")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(index_module, "write_bytes_atomic", refuse)
    with pytest.warns(IndexWarning, match="cannot be rewritten"):
        assert set(ExperimentIndex(tmp_path).entries()) == {"a"}


def test_rebuild_keeps_active_pointer_and_history(tmp_path: Path):
    for name in ("a", "b"):
        make_experiment(tmp_path, name)
    index = ExperimentIndex(tmp_path)
    index.rebuild()
    index.set_active("a", user="alice")
    index.set_active("b", user="bob")
    assert index.rebuild().keys() == {"a", "b"}
    state = index.active_state()
    assert state["exp_id"] == "b" and [h["user"] for h in state["history"]] == ["alice", "bob"]
    # Index lost entirely: the sidecar file brings the pointer back.
    index.path.unlink()
    assert (tmp_path / ACTIVE_FILE).is_file()
    index.rebuild()
    assert index.active() == "b" and len(index.active_state()["history"]) == 2
    # Corrupt index: automatic rebuild restores it too.
    index.path.write_text("{", encoding="utf-8")
    with pytest.warns(IndexWarning):
        assert index.active() == "b"


def test_rebuild_drops_deleted_folders_and_skips_broken_ones(tmp_path: Path):
    make_experiment(tmp_path, "keep")
    gone = make_experiment(tmp_path, "gone")
    index = ExperimentIndex(tmp_path)
    index.rebuild()
    for f in gone.iterdir():
        f.unlink()
    gone.rmdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{", encoding="utf-8")
    (tmp_path / "not_an_experiment").mkdir()
    with pytest.warns(IndexWarning, match="broken"):
        assert set(index.rebuild()) == {"keep"}


def test_remove_and_get(tmp_path: Path):
    make_experiment(tmp_path, "exp_v4_double_label")
    index = ExperimentIndex(tmp_path)
    index.sync("exp_v4_double_label")
    with pytest.raises(ExperimentNotFound, match="did you mean exp_v4_double_label"):
        index.get("exp_v4_double_labe")
    index.remove("exp_v4_double_label")
    assert index.entries() == {}
    # Not in the index but on disk: read from the folder.
    assert index.get("exp_v4_double_label")["status"] == "completed"


def test_sync_is_quick(tmp_path: Path):
    for i in range(200):
        make_experiment(tmp_path, f"e{i:03d}")
    index = ExperimentIndex(tmp_path)
    index.rebuild()
    start = time.perf_counter()
    for i in range(20):
        index.sync(f"e{i:03d}")
    assert (time.perf_counter() - start) / 20 < 0.1
