"""The battery, damaged-files part (issue 12): every file lorakit reads back, damaged every way a disk, a
copy or a hand can damage it, read by every command that reads it. Each case gives one line: an error
``<path>: damaged (<reason>)`` with exit 2 where the command cannot go on (``show``, ``rollback``,
``predict``, ``train --resume``, the queue), a warning naming the file where it can (``ls``, ``compare``,
``index rebuild`` leave that experiment out; a damaged index is rebuilt). And the outputs folder is as it
was: nothing damaged is overwritten or deleted.

One tiny experiment is trained once for the module and stopped after its first epoch (preempted, with a
checkpoint), so that it has every file a folder can have; two handwritten completed experiments sit beside
it. Each case damages a copy of that outputs folder and runs ``lorakit`` in this process (battery_harness).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
from pathlib import Path
from typing import Any

import pytest
from battery_harness import case, expect_error, expect_warning, lorakit, snapshot
from test_index import make_experiment

from lorakit.hookspecs import hookimpl
from lorakit.testing import plugins_with, synthetic_frame

EXP = "tiny"
INDEX = "experiment_index.json"
# What an index rebuild legitimately writes: the index (derived from the folders, rebuilt on purpose) and
# its lock file.
INDEX_FILES = (INDEX, INDEX + ".lock")
# What every `lorakit train` writes before it reads anything: the run lock beside the folder.
RUN_LOCK = ".locks"


class _StopAfterFirstEpoch:
    """Sends this process SIGUSR1 after epoch 1: the run checkpoints and ends preempted, resumable."""

    @hookimpl
    def lorakit_on_epoch_end(self, exp_id: str, epoch: int, metrics: Any) -> None:
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGUSR1)


def _config_text(root: Path, tiny_bert: Path) -> str:
    return "\n".join(
        [
            f'exp_id = "{EXP}"',
            "[data]",
            f'raw_data_path = "{(root / "train.csv").as_posix()}"',
            f'cache_dir = "{(root / "cache").as_posix()}"',
            "max_rows = 160",
            "max_len = 32",
            "val_ratio = 0.25",
            "[data.label_subset]",
            'risk_level = ["低风险", "中风险", "高风险"]',
            'is_adopt = ["采纳", "不采纳"]',
            "[model]",
            f'arch = "{tiny_bert.as_posix()}"',
            "[model.lora]",
            "rank = 4",
            "alpha = 8",
            "[train]",
            "batch_size = 16",
            "lr = 5e-3",
            "epochs = 2",
            "",
        ]
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """A folder with ``tiny.toml`` and ``out/``: ``tiny`` (trained, preempted after epoch 1, with a
    checkpoint), ``done`` and ``other`` (handwritten, completed) and a valid index."""
    from lorakit import Experiment

    root = tmp_path_factory.mktemp("damaged")
    synthetic_frame(160, seed=1, tasks=2).to_csv(root / "train.csv", index=False)
    config = root / f"{EXP}.toml"
    config.write_text(_config_text(root, tiny_bert), encoding="utf-8")
    out = root / "out"
    with pytest.raises(Exception, match="SIGUSR1"):
        Experiment(config, outputs=out, plugins=plugins_with(_StopAfterFirstEpoch())).run(echo=False)
    make_experiment(out, "done", f1s=[0.7, 0.8])
    make_experiment(out, "other", lr=1e-4, f1s=[0.6, 0.75])
    from lorakit.runs.index import ExperimentIndex

    ExperimentIndex(out).rebuild()
    shutil.rmtree(
        out / RUN_LOCK, ignore_errors=True
    )  # a run removes its lock when it ends; older ones did not
    assert json.loads((out / EXP / "run.json").read_text(encoding="utf-8"))["status"] == "preempted"
    return root


@pytest.fixture
def work(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template for one case."""
    shutil.copytree(template / "out", tmp_path / "out", symlinks=True)
    shutil.copy2(template / f"{EXP}.toml", tmp_path / f"{EXP}.toml")
    return tmp_path


# ---- damages --------------------------------------------------------------------------------------------


def _set_key(path: Path, dotted: str, value: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _foreign_safetensors() -> bytes:
    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0\0\0\0"


def damage(path: Path, how: str, arg: Any = None) -> None:
    """Damage ``path`` as ``how`` says (``wrong_type``: ``arg`` is ``(dotted key, value)``)."""
    data = path.read_bytes() if path.is_file() else b""
    if how in ("missing", "directory"):
        path.unlink()
        if how == "directory":
            path.mkdir()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "not_json":
        path.write_bytes(b"status: completed\n")
    elif how == "not_toml":
        path.write_bytes(b"exp_id = = 'tiny'\n")
    elif how == "wrong_top":
        path.write_bytes(b"[1, 2, 3]\n")
    elif how == "wrong_type":
        _set_key(path, *arg)
    elif how == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif how == "not_utf8":
        path.write_bytes(b'{"status": "caf\xe9"}\n' if path.suffix == ".json" else b'exp_id = "caf\xe9"\n')
    elif how == "foreign":
        path.write_bytes(_foreign_safetensors())
    else:  # pragma: no cover - a typo in a case
        raise ValueError(how)


# the line each damage gives, after "<path>: "
SAID = {
    "missing": "damaged (missing)",
    "directory": "damaged (a directory, not a file)",
    "empty": "damaged (empty)",
    "truncated": "damaged (truncated",
    "not_json": "damaged (not JSON: Expecting value at line 1 column 1)",
    "not_toml": "damaged (not TOML",
    "wrong_top": "damaged (expected a JSON object, got a list)",
    "garbage": "damaged (binary data, not text",
    "not_utf8": "damaged (not UTF-8",
}


def _unchanged_except(before: dict, after: dict, *prefixes: str) -> None:
    def keep(snap: dict) -> dict:
        return {k: v for k, v in snap.items() if not k.startswith(prefixes)} if prefixes else snap

    assert keep(after) == keep(before)


# ---- show: one experiment, every file it reads --------------------------------------------------------

SHOW = [
    *(case("run.json", how, None, SAID[how], id=f"show-run.json-{how}") for how in SAID if how != "not_toml"),
    case(
        "run.json",
        "wrong_type",
        ("status", "finished"),
        "damaged (key 'status': expected one of running, completed, failed, preempted, got 'finished')",
        id="show-run.json-unknown-status",
    ),
    case(
        "run.json",
        "wrong_type",
        ("tasks", ["risk_level"]),
        "damaged (key 'tasks': expected a JSON object, got a list)",
        id="show-run.json-wrong-type",
    ),
    *(
        case("metrics.json", how, None, SAID[how], id=f"show-metrics.json-{how}")
        for how in ("truncated", "not_json", "wrong_top", "garbage", "directory")
    ),
    case(
        "metrics.json",
        "wrong_type",
        ("best", [0.9]),
        "damaged (key 'best': expected a JSON object, got a list)",
        id="show-metrics.json-wrong-type",
    ),
    *(
        case("reports.json", how, None, SAID[how], id=f"show-reports.json-{how}")
        for how in ("truncated", "not_json")
    ),
    case(
        "reports.json",
        "wrong_type",
        ("best", [0.9]),
        "damaged (key 'best': expected a JSON object, got a list)",
        id="show-reports.json-wrong-type",
    ),
    *(
        case("config_copy.toml", how, None, SAID[how], id=f"show-config_copy.toml-{how}")
        for how in ("empty", "not_toml", "not_utf8", "garbage", "directory")
    ),
    case(
        "env_info.json",
        "wrong_type",
        ("peak_memory_mb", "lots"),
        "damaged (key 'peak_memory_mb': expected a number, got a string)",
        id="show-env_info.json-wrong-type",
    ),
    case("env_info.json", "truncated", None, SAID["truncated"], id="show-env_info.json-truncated"),
    case(
        "label_map.json",
        "wrong_type",
        ("tasks", "risk_level"),
        "damaged (key 'tasks': expected a JSON object, got a string)",
        id="show-label_map.json-wrong-type",
    ),
]


@pytest.mark.parametrize(("name", "how", "arg", "said"), SHOW)
def test_show_stops_on_a_damaged_file(work: Path, name: str, how: str, arg: Any, said: str):
    out = work / "out"
    damage(out / EXP / name, how, arg)
    before = snapshot(work)
    result = lorakit("show", EXP, "--outputs", str(out))
    expect_error(result, 2, f"{EXP}/{name}: {said}")
    assert snapshot(work) == before


# ---- ls, compare, index rebuild: the damaged experiment is left out and named -------------------------

LISTING = [
    *(
        case("run.json", how, None, SAID[how], id=f"ls-run.json-{how}")
        for how in ("truncated", "not_json", "wrong_top", "garbage", "not_utf8", "empty", "directory")
    ),
    case(
        "run.json",
        "wrong_type",
        ("key_params", "lr=0.005"),
        "damaged (key 'key_params': expected a JSON object, got a string)",
        id="ls-run.json-wrong-type",
    ),
    case("metrics.json", "truncated", None, SAID["truncated"], id="ls-metrics.json-truncated"),
    case(
        "metrics.json",
        "wrong_type",
        ("epoch_1", 0.27),
        "damaged (key 'epoch_1': expected a JSON object, got a number)",
        id="ls-metrics.json-wrong-type",
    ),
    case("env_info.json", "not_json", None, SAID["not_json"], id="ls-env_info.json-not-json"),
    case(
        "label_map.json",
        "wrong_type",
        ("tasks.is_adopt.labels", "采纳"),
        "damaged (key 'tasks.is_adopt.labels': expected a list, got a string)",
        id="ls-label_map.json-wrong-type",
    ),
]


@pytest.mark.parametrize(("name", "how", "arg", "said"), LISTING)
def test_ls_leaves_a_damaged_folder_out_and_names_it(work: Path, name: str, how: str, arg: Any, said: str):
    out = work / "out"
    (out / INDEX).unlink()  # the index is rebuilt from the folders: that is when a folder is read
    damage(out / EXP / name, how, arg)
    before = snapshot(work)
    result = lorakit("ls", "--json", "--outputs", str(out))
    expect_warning(result, f"skipped {out / EXP}: {out / EXP / name}: {said}")
    assert [row["exp_id"] for row in json.loads(result.out)] == ["done", "other"]
    _unchanged_except(before, snapshot(work), *(f"out/{name}" for name in INDEX_FILES))


REBUILD = [
    case("run.json", "truncated", None, SAID["truncated"], id="rebuild-run.json-truncated"),
    case("run.json", "garbage", None, SAID["garbage"], id="rebuild-run.json-garbage"),
    case("run.json", "directory", None, SAID["directory"], id="rebuild-run.json-directory"),
    case("metrics.json", "not_utf8", None, SAID["not_utf8"], id="rebuild-metrics.json-not-utf8"),
    case("env_info.json", "wrong_top", None, SAID["wrong_top"], id="rebuild-env_info.json-wrong-top"),
]


@pytest.mark.parametrize(("name", "how", "arg", "said"), REBUILD)
def test_index_rebuild_rebuilds_from_the_intact_folders(work: Path, name: str, how: str, arg: Any, said: str):
    out = work / "out"
    damage(out / EXP / name, how, arg)
    before = snapshot(work)
    result = lorakit("index", "rebuild", "--outputs", str(out))
    expect_warning(result, f"{out / EXP / name}: {said}")
    assert "2 experiments" in result.out
    assert set(json.loads((out / INDEX).read_text(encoding="utf-8"))["experiments"]) == {"done", "other"}
    # the index is derived from the folders and rebuilt on purpose; everything else is as it was
    _unchanged_except(before, snapshot(work), *(f"out/{name}" for name in INDEX_FILES))


COMPARE = [
    *(
        case(how, SAID[how], id=f"compare-config_copy.toml-{how}")
        for how in ("not_toml", "not_utf8", "garbage", "empty", "directory")
    ),
]


@pytest.mark.parametrize(("how", "said"), COMPARE)
def test_compare_leaves_a_damaged_config_copy_out(work: Path, how: str, said: str):
    out = work / "out"
    damage(out / EXP / "config_copy.toml", how)
    before = snapshot(work)
    result = lorakit("compare", "--only-changed", "--format", "json", "--outputs", str(out))
    expect_warning(result, f"skipped {out / EXP}: {out / EXP / 'config_copy.toml'}: {said}")
    assert [row["exp_id"] for row in json.loads(result.out)] == ["done", "other"]
    assert snapshot(work) == before  # the index was intact: nothing written


# ---- the index itself: rebuilt from the folders, with a warning -----------------------------------------

INDEX_DAMAGES = [
    *(
        case(how, None, SAID[how], id=f"index-{how}")
        for how in ("truncated", "not_json", "wrong_top", "garbage", "not_utf8", "empty")
    ),
    case(
        "wrong_type",
        (f"experiments.{EXP}", ["preempted"]),
        f"damaged (key 'experiments.{EXP}': expected a JSON object, got a list)",
        id="index-entry-not-an-object",
    ),
    case(
        "wrong_type",
        (f"experiments.{EXP}.best_metrics", [0.27]),
        f"damaged (key 'experiments.{EXP}.best_metrics': expected a JSON object, got a list)",
        id="index-entry-field-wrong-type",
    ),
    case(
        "wrong_type",
        ("active", "tiny"),
        "damaged (key 'active': expected a JSON object, got a string)",
        id="index-active-wrong-type",
    ),
]


@pytest.mark.parametrize(("how", "arg", "said"), INDEX_DAMAGES)
def test_a_damaged_index_is_rebuilt_with_a_warning(work: Path, how: str, arg: Any, said: str):
    out = work / "out"
    damage(out / INDEX, how, arg)
    before = snapshot(work)
    result = lorakit("ls", "--json", "--outputs", str(out))
    expect_warning(result, f"experiment index {out / INDEX}: {said}")
    assert "rebuilt from 3 experiment folder(s)" in result.err
    assert [row["exp_id"] for row in json.loads(result.out)] == ["done", "other", EXP]
    _unchanged_except(before, snapshot(work), *(f"out/{name}" for name in INDEX_FILES))


# ---- rollback: nothing is made active, no config is written ---------------------------------------------

ROLLBACK = [
    case("run.json", "missing", None, SAID["missing"], id="rollback-run.json-missing"),
    case("run.json", "not_json", None, SAID["not_json"], id="rollback-run.json-not-json"),
    case(
        "run.json",
        "wrong_type",
        ("status", True),
        "damaged (key 'status': expected one of running, completed, failed, preempted, got true or false)",
        id="rollback-run.json-wrong-type",
    ),
    case("metrics.json", "truncated", None, SAID["truncated"], id="rollback-metrics.json-truncated"),
    case("config_copy.toml", "not_utf8", None, SAID["not_utf8"], id="rollback-config_copy.toml-not-utf8"),
    case("config_copy.toml", "garbage", None, SAID["garbage"], id="rollback-config_copy.toml-garbage"),
    case("config_copy.toml", "not_toml", None, SAID["not_toml"], id="rollback-config_copy.toml-not-toml"),
]


@pytest.mark.parametrize(("name", "how", "arg", "said"), ROLLBACK)
def test_rollback_refuses_a_damaged_experiment(work: Path, name: str, how: str, arg: Any, said: str):
    out = work / "out"
    damage(out / "done" / name, how, arg)
    before = snapshot(work)
    result = lorakit(
        "rollback", "--exp-id", "done", "--configs-dir", str(work / "configs"), "--outputs", str(out)
    )
    expect_error(result, 2, f"done/{name}: {said}")
    assert snapshot(work) == before and not (work / "configs").exists()


# ---- predict: the trained model's files -----------------------------------------------------------------

ADAPTER = "lora_adapter"
PREDICT = [
    *(
        case("heads.json", how, None, SAID[how], id=f"predict-heads.json-{how}")
        for how in ("missing", "truncated", "not_json", "wrong_top", "directory")
    ),
    case(
        "heads.json",
        "wrong_type",
        ("tasks.0.num_labels", "three"),
        "damaged (key 'tasks[0].num_labels': expected an integer, got a string)",
        id="predict-heads.json-wrong-type",
    ),
    case(
        "heads.json",
        "wrong_type",
        ("labels.risk_level.labels", ["低风险"]),
        "damaged (task 'risk_level' has 3 labels but 1 names)",
        id="predict-heads.json-label-count",
    ),
    case("heads.safetensors", "missing", None, SAID["missing"], id="predict-heads.safetensors-missing"),
    case("heads.safetensors", "empty", None, SAID["empty"], id="predict-heads.safetensors-empty"),
    case("heads.safetensors", "truncated", None, SAID["truncated"], id="predict-heads.safetensors-truncated"),
    case(
        "heads.safetensors",
        "garbage",
        None,
        "damaged (not a safetensors file)",
        id="predict-heads.safetensors-garbage",
    ),
    case(
        "heads.safetensors",
        "foreign",
        None,
        "damaged (does not fit the heads of heads.json: missing [",
        id="predict-heads.safetensors-foreign",
    ),
    case("adapter_config.json", "missing", None, SAID["missing"], id="predict-adapter_config.json-missing"),
    case(
        "adapter_config.json", "not_json", None, SAID["not_json"], id="predict-adapter_config.json-not-json"
    ),
    case(
        "adapter_config.json",
        "wrong_type",
        ("peft_type", 5),
        "damaged (key 'peft_type': expected a string, got an integer)",
        id="predict-adapter_config.json-wrong-type",
    ),
    case(
        "adapter_model.safetensors",
        "truncated",
        None,
        SAID["truncated"],
        id="predict-adapter_model.safetensors-truncated",
    ),
    case(
        "adapter_model.safetensors",
        "missing",
        None,
        SAID["missing"],
        id="predict-adapter_model.safetensors-missing",
    ),
    case(
        "adapter_model.safetensors",
        "garbage",
        None,
        "damaged (not a safetensors file)",
        id="predict-adapter_model.safetensors-garbage",
    ),
]


@pytest.mark.parametrize(("name", "how", "arg", "said"), PREDICT)
def test_predict_stops_on_a_damaged_model_file(work: Path, name: str, how: str, arg: Any, said: str):
    out = work / "out"
    damage(out / EXP / ADAPTER / name, how, arg)
    before = snapshot(work)
    result = lorakit("predict", EXP, "--text", "这笔贷款信用记录良好", "--outputs", str(out))
    expect_error(result, 2, f"{EXP}/{ADAPTER}/{name}: {said}")
    assert snapshot(work) == before


# ---- train --resume: run.json and every file of the checkpoint ------------------------------------------


def _step(out: Path) -> str:
    (step,) = sorted((out / EXP / "checkpoints").glob("step-*"))
    return f"checkpoints/{step.name}"


RESUME = [
    case("run.json", "not_json", None, SAID["not_json"], id="resume-run.json-not-json"),
    case("run.json", "missing", None, SAID["missing"], id="resume-run.json-missing"),
    case("run.json", "directory", None, SAID["directory"], id="resume-run.json-directory"),
    case(
        "run.json",
        "wrong_type",
        ("status", 7),
        "damaged (key 'status': expected one of running, completed, failed, preempted, got 7)",
        id="resume-run.json-status-wrong-type",
    ),
    # a resume rewrites these at the next epoch's end: a damaged one must stop it, not be buried
    case("metrics.json", "truncated", None, SAID["truncated"], id="resume-metrics.json-truncated"),
    case("metrics.json", "not_json", None, SAID["not_json"], id="resume-metrics.json-not-json"),
    case("env_info.json", "wrong_top", None, SAID["wrong_top"], id="resume-env_info.json-wrong-top"),
    case("label_map.json", "truncated", None, SAID["truncated"], id="resume-label_map.json-truncated"),
    case("config_copy.toml", "not_utf8", None, SAID["not_utf8"], id="resume-config_copy.toml-not-utf8"),
    case("run.json", "wrong_top", None, SAID["wrong_top"], id="resume-run.json-wrong-top"),
    case(
        "{step}/trainer_state.json", "missing", None, SAID["missing"], id="resume-trainer_state.json-missing"
    ),
    case(
        "{step}/trainer_state.json",
        "truncated",
        None,
        SAID["truncated"],
        id="resume-trainer_state.json-truncated",
    ),
    case(
        "{step}/trainer_state.json",
        "wrong_type",
        ("loop.epoch", "1"),
        "damaged (key 'loop.epoch': expected an integer, got a string)",
        id="resume-trainer_state.json-wrong-type",
    ),
    case(
        "{step}/trainable.safetensors",
        "truncated",
        None,
        SAID["truncated"],
        id="resume-trainable.safetensors-truncated",
    ),
    case("{step}/optimizer.pt", "truncated", None, SAID["truncated"], id="resume-optimizer.pt-truncated"),
    case(
        "{step}/optimizer.pt",
        "garbage",
        None,
        "damaged (not a torch checkpoint file)",
        id="resume-optimizer.pt-garbage",
    ),
    case("{step}/scheduler.pt", "empty", None, SAID["empty"], id="resume-scheduler.pt-empty"),
    case("{step}/rng.pt", "missing", None, SAID["missing"], id="resume-rng.pt-missing"),
    case("{step}/rng.pt", "directory", None, SAID["directory"], id="resume-rng.pt-directory"),
    case(
        "checkpoints/best-trainable.safetensors",
        "garbage",
        None,
        "damaged (not a safetensors file)",
        id="resume-best-trainable.safetensors-garbage",
    ),
]


@pytest.mark.parametrize(("name", "how", "arg", "said"), RESUME)
def test_resume_stops_on_a_damaged_file_before_touching_the_folder(
    work: Path, name: str, how: str, arg: Any, said: str
):
    out = work / "out"
    name = name.format(step=_step(out))
    damage(out / EXP / name, how, arg)
    before = snapshot(work)
    result = lorakit("train", str(work / f"{EXP}.toml"), "--outputs", str(out), "--resume")
    expect_error(result, 2, f"{EXP}/{name}: {said}")
    # every train takes the run lock beside the folder before it reads anything; nothing else changed
    _unchanged_except(before, snapshot(work), f"out/{RUN_LOCK}")


def test_the_intact_copy_resumes(work: Path):
    """The control of the resume cases: the same copy, undamaged, resumes and completes."""
    out = work / "out"
    result = lorakit("train", str(work / f"{EXP}.toml"), "--outputs", str(out), "--resume")
    assert result.code == 0, result.err
    assert json.loads((out / EXP / "run.json").read_text(encoding="utf-8"))["status"] == "completed"


# ---- the queue database ----------------------------------------------------------------------------------


def _queue_with_jobs(out: Path) -> Path:
    from lorakit.scheduling.queue import JobQueue

    queue = JobQueue(out)
    for i in range(40):  # enough rows for several pages: a cut then loses pages the header counts
        queue.submit(exp_id=f"job{i}", config_path="x.toml")
    return queue.path


QUEUE: list[Any] = [
    case("garbage", ("queue",), "damaged (not an SQLite database)", id="queue-db-garbage"),
    case("truncated", ("queue",), "damaged (truncated", id="queue-db-truncated"),
    case("foreign", ("queue", "--json"), "damaged (not a lorakit queue database)", id="queue-db-foreign"),
    case("garbage", ("cancel", "1"), "damaged (not an SQLite database)", id="cancel-db-garbage"),
]


def _damage_queue(path: Path, how: str) -> None:
    import sqlite3

    if how == "foreign":
        path.unlink()
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE photos (id INTEGER, name TEXT)")
        conn.commit()
        conn.close()
        return
    damage(path, how)


@pytest.mark.parametrize(("how", "argv", "said"), QUEUE)
def test_a_damaged_queue_database_is_one_line(work: Path, how: str, argv: tuple[str, ...], said: str):
    out = work / "out"
    _damage_queue(_queue_with_jobs(out), how)
    before = snapshot(work)
    result = lorakit(*argv, "--outputs", str(out))
    expect_error(result, 2, f"out/scheduler.sqlite3: {said}")
    assert snapshot(work) == before  # not re-created over, no -wal/-shm files beside it


def test_the_battery_holds_its_cases():
    groups = (SHOW, LISTING, REBUILD, COMPARE, INDEX_DAMAGES, ROLLBACK, PREDICT, RESUME, QUEUE)
    assert sum(map(len, groups)) >= 40
