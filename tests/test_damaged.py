"""The validating reader (lorakit.readback) and its call sites: each damage has its one short reason, code
written against ``json`` and ``open`` still catches what it caught, and nothing damaged is overwritten.

The command-level cases (show, ls, compare, index rebuild, rollback, predict, train --resume, the queue)
are in test_battery_damaged.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import threading
import warnings
from pathlib import Path

import pytest
from test_index import make_experiment

from lorakit import readback as rb
from lorakit.errors import DamagedFile, LorakitError, LorakitWarning
from lorakit.fsutil import read_json, write_json_atomic
from lorakit.runs.index import ExperimentIndex, IndexWarning
from lorakit.runs.layout import RunLayout

# ---- bytes, text, JSON ----------------------------------------------------------------------------------

JSON_DAMAGES = [
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b"  \n", "empty", id="blank"),
    pytest.param(b'{"status": "comp', "truncated: the JSON ends at line 1 column 12", id="cut-in-a-string"),
    pytest.param(b'{"status": "completed", ', "truncated: the JSON ends at line 1 column 25", id="cut"),
    pytest.param(b"status = 1", "not JSON: Expecting value at line 1 column 1", id="not-json"),
    pytest.param(b'{"a": 1} {"b": 2}', "not JSON: Extra data at line 1 column 10", id="two-documents"),
    pytest.param(b"[1, 2]", "expected a JSON object, got a list", id="list"),
    pytest.param(b'"text"', "expected a JSON object, got a string", id="string"),
    pytest.param(b"\x00\x00\x00\x00", "binary data, not text: NUL byte at offset 0", id="zeros"),
    pytest.param(b'{"a": "\xff"}', "not UTF-8: byte 0xff at offset 7", id="latin-1"),
    pytest.param(b'{"a": "\xe4\xbd', "truncated: ends inside a UTF-8 character", id="cut-character"),
]


@pytest.mark.parametrize(("content", "reason"), JSON_DAMAGES)
def test_each_json_damage_has_its_reason(tmp_path: Path, content: bytes, reason: str):
    path = tmp_path / "run.json"
    path.write_bytes(content)
    with pytest.raises(DamagedFile) as info:
        rb.read_json(path)
    assert str(info.value) == f"{path}: damaged ({reason})"
    assert info.value.path == str(path) and info.value.reason == reason
    assert info.value.lines() == [f"{path}: damaged ({reason})"]


def test_a_byte_order_mark_is_allowed(tmp_path: Path):
    path = tmp_path / "run.json"
    path.write_bytes(b'\xef\xbb\xbf{"status": "completed"}')
    assert rb.read_json(path) == {"status": "completed"}


def test_missing_directory_and_fifo(tmp_path: Path):
    with pytest.raises(DamagedFile, match=r"none.json: damaged \(missing\)$"):
        rb.read_json(tmp_path / "none.json")
    assert rb.read_json(tmp_path / "none.json", missing_ok=True) is None
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DamagedFile, match=r"damaged \(a directory, not a file\)"):
        rb.read_json(tmp_path / "dir.json", missing_ok=True)  # there, but not a file: not "missing"
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            rb.read_json(fifo)
        except DamagedFile as exc:
            result.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert "damaged (a FIFO, not a file)" in str(result[0])


def test_fsutil_read_json_keeps_the_errors_its_callers_catch(tmp_path: Path):
    """fsutil.read_json goes through the reader; the data cache and the runner catch OSError/ValueError."""
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError):
        read_json(tmp_path / "bad.json")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OSError):
        read_json(tmp_path / "dir.json")
    for name in ("none.json", "bad.json", "dir.json"):
        with pytest.raises(LorakitError, match="damaged"):
            read_json(tmp_path / name)
    write_json_atomic(tmp_path / "ok.json", {"a": [1, "é"]})
    assert read_json(tmp_path / "ok.json") == {"a": [1, "é"]}
    assert read_json(tmp_path / "ok.json", None) == {"a": [1, "é"]}


# ---- shape checks ---------------------------------------------------------------------------------------

RUN = rb.fields(
    {
        "status": rb.one_of("running", "completed"),
        "epochs": rb.INTEGER,
        "lr": rb.NUMBER,
        "notes": rb.optional(rb.list_of(rb.STRING)),
        "tasks": rb.dict_of(rb.list_of(rb.STRING)),
    },
    required=("status",),
)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"status": "completed", "epochs": 3, "lr": 1, "notes": None, "tasks": {"a": ["x"]}}, None),
        ({}, "key 'status' missing"),
        ({"status": "done"}, "key 'status': expected one of running, completed, got 'done'"),
        ({"status": True}, "key 'status': expected one of running, completed, got true or false"),
        ({"status": "running", "epochs": True}, "key 'epochs': expected an integer, got true or false"),
        ({"status": "running", "epochs": 2.5}, "key 'epochs': expected an integer, got a number"),
        ({"status": "running", "lr": "1e-4"}, "key 'lr': expected a number, got a string"),
        ({"status": "running", "notes": [1]}, "key 'notes[0]': expected a string, got an integer"),
        ({"status": "running", "tasks": {"a": "x"}}, "key 'tasks.a': expected a list, got a string"),
        ({"status": "running", "unknown": object()}, None),  # keys a newer lorakit adds are allowed
        ([], "expected a JSON object, got a list"),
    ],
)
def test_shape_checks_name_the_key(value: object, problem: str | None):
    assert RUN(value, "") == problem


# ---- binary formats ---------------------------------------------------------------------------------------


def _safetensors(tensors: dict[str, tuple[str, list[int], bytes]], extra: bytes = b"") -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data + extra


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"\x01\x02", "truncated: 2 bytes"),
        (b"\xff" * 64, "not a safetensors file"),
        (struct.pack("<Q", 40) + b"{}", "truncated: ends inside the header"),
        (struct.pack("<Q", 4) + b"abcd", "not a safetensors file: its header is not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a safetensors file: its header is not a JSON object"),
        (struct.pack("<Q", 9) + b'{"x": 1} ', "not a safetensors file: tensor 'x' is malformed"),
        (_safetensors({"w": ("F32", [2], b"\0" * 8)})[:-3], "truncated: "),
        (_safetensors({"w": ("F32", [2], b"\0" * 8)}, b"junk"), "4 bytes longer than its header says"),
    ],
)
def test_safetensors_header(tmp_path: Path, content: bytes, reason: str):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(DamagedFile) as info:
        rb.safetensors_header(path)
    assert info.value.reason.startswith(reason)


def test_a_real_safetensors_file_and_torch_file_pass(tmp_path: Path):
    import torch
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3), "b": torch.ones(2, 2)}, str(tmp_path / "w.safetensors"))
    assert set(rb.safetensors_header(tmp_path / "w.safetensors")) >= {"a", "b"}
    torch.save({"state": {}, "param_groups": []}, tmp_path / "o.pt")
    rb.check_torch_file(tmp_path / "o.pt")
    data = (tmp_path / "o.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFile, match=r"damaged \(truncated: "):
        rb.check_torch_file(tmp_path / "cut.pt")
    (tmp_path / "json.pt").write_text("{}", encoding="utf-8")
    with pytest.raises(DamagedFile, match=r"damaged \(not a torch checkpoint file\)"):
        rb.check_torch_file(tmp_path / "json.pt")


def test_sqlite_header(tmp_path: Path):
    rb.check_sqlite_file(tmp_path / "none.sqlite3")  # SQLite creates it: not damage
    (tmp_path / "empty.sqlite3").write_bytes(b"")
    rb.check_sqlite_file(tmp_path / "empty.sqlite3")
    (tmp_path / "text.sqlite3").write_text("jobs: []\n", encoding="utf-8")
    with pytest.raises(DamagedFile, match=r"damaged \(not an SQLite database\)"):
        rb.check_sqlite_file(tmp_path / "text.sqlite3")


# ---- call sites ---------------------------------------------------------------------------------------------


def test_a_bad_row_of_the_queue_is_damage_not_a_traceback(tmp_path: Path):
    from lorakit.scheduling.queue import JobQueue

    queue = JobQueue(tmp_path)
    job = queue.submit(exp_id="a", config_path="a.toml")
    conn = sqlite3.connect(queue.path)
    conn.execute("UPDATE jobs SET notes = '{not json' WHERE id = ?", (job.id,))
    conn.commit()
    conn.close()
    with pytest.raises(DamagedFile, match=r"damaged \(job 1: column notes is not a JSON list\)"):
        queue.jobs()


def test_a_foreign_database_is_left_as_it_was(tmp_path: Path):
    from lorakit.scheduling.queue import DB_FILE, JobQueue

    conn = sqlite3.connect(tmp_path / DB_FILE)
    conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.commit()
    conn.close()
    before = (tmp_path / DB_FILE).read_bytes()
    with pytest.raises(DamagedFile, match="not a lorakit queue database"):
        JobQueue(tmp_path).submit(exp_id="a", config_path="a.toml")
    assert (tmp_path / DB_FILE).read_bytes() == before  # not switched to WAL, no jobs table added
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_FILE]


def test_read_run_strict_or_warned_and_never_force_over_damage(tmp_path: Path):
    from lorakit.scheduling.launch import read_run, start_flags
    from lorakit.scheduling.queue import JobQueue

    folder = make_experiment(tmp_path, "a", status="preempted")
    assert read_run(tmp_path, "a").status == "preempted"
    assert read_run(tmp_path, "nope") is None
    (folder / "run.json").write_text('{"status": ', encoding="utf-8")
    with pytest.raises(DamagedFile):
        read_run(tmp_path, "a", strict=True)
    with pytest.warns(LorakitWarning, match=r"run.json: damaged \(truncated"):
        assert read_run(tmp_path, "a") is None
    job = JobQueue(tmp_path).submit(exp_id="a", config_path="a.toml", start_mode="resume")
    assert start_flags(job, tmp_path) == ["--resume"]  # --force would delete the damaged folder
    (folder / "run.json").unlink()  # gone, while metrics and env_info say it was an experiment
    assert start_flags(job, tmp_path) == ["--resume"]


def test_queue_progress_of_a_damaged_folder_is_blank_and_quiet(tmp_path: Path, recwarn):
    from lorakit.scheduling.display import folder_progress

    folder = make_experiment(tmp_path, "a", f1s=[0.5, 0.8])
    assert folder_progress(tmp_path, "a") == (2, "avg_f1", 0.8)
    (folder / "metrics.json").write_bytes(b"\x00" * 10)
    assert folder_progress(tmp_path, "a") == (0, None, None)
    (folder / "metrics.json").unlink()
    assert folder_progress(tmp_path, "a") == (0, None, None)
    assert not recwarn.list


def test_a_damaged_active_pointer_is_warned_about(tmp_path: Path):
    make_experiment(tmp_path, "a")
    index = ExperimentIndex(tmp_path)
    index.rebuild()
    index.set_active("a", user="me")
    index.path.unlink()
    index.active_path.write_text('{"exp_id": 3}', encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert index.active() is None
    said = [str(w.message) for w in caught if issubclass(w.category, IndexWarning)]
    assert any("lorakit_active.json: damaged (key 'exp_id'" in m and "not known" in m for m in said), said
    assert index.active_path.read_text(encoding="utf-8") == '{"exp_id": 3}'  # left for the user to see


def test_a_folder_without_run_json_is_damaged_only_when_it_got_further(tmp_path: Path):
    layout = RunLayout(tmp_path / "a")
    layout.root.mkdir()
    layout.config_copy.write_text('exp_id = "a"\n', encoding="utf-8")  # a run that is starting
    layout.require_run()
    assert not layout.has_experiment_files()
    layout.metrics.write_text("{}", encoding="utf-8")  # written only after run.json
    with pytest.raises(DamagedFile, match=r"a/run.json: damaged \(missing\)"):
        layout.require_run()


def test_experiment_load_reports_a_damaged_heads_json(tmp_path: Path):
    from lorakit import Experiment

    folder = make_experiment(tmp_path, "a")
    (folder / "lora_adapter").mkdir()
    (folder / "lora_adapter" / "heads.json").write_text('{"arch": "x"}', encoding="utf-8")
    with pytest.raises(DamagedFile, match=r"heads.json: damaged \(key 'backbone' missing\)"):
        Experiment.load("a", outputs=tmp_path)
    (folder / "lora_adapter" / "heads.json").unlink()
    with pytest.raises(DamagedFile, match=r"heads.json: damaged \(missing\)"):
        Experiment.load("a", outputs=tmp_path)


def test_index_reads_are_fast_with_validation(tmp_path: Path):
    """Every read of the index checks every entry's shape: hundreds of entries still read in milliseconds."""
    import time

    make_experiment(tmp_path, "a")
    index = ExperimentIndex(tmp_path)
    entry = index.sync("a")
    data = {"experiments": {f"e{i}": entry for i in range(500)}, "active": {"exp_id": None, "history": []}}
    index.path.write_text(json.dumps(data), encoding="utf-8")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(index.entries()) == 500
    assert time.perf_counter() - start < 0.5


# ---- checkpoints ---------------------------------------------------------------------------------------------


def _checkpoint(tmp_path: Path, step: int = 4) -> Path:
    import torch

    from lorakit.training.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loop = {"epoch": 1, "batch": 2, "global_step": step, "history": {}, "best_epoch": None}
    return save_checkpoint(
        tmp_path / "checkpoints",
        global_step=step,
        weights={k: v.detach().clone() for k, v in model.state_dict().items()},
        optimizer=optimizer,
        scheduler=scheduler,
        state={"loop": loop, "world_size": 1, "precision": "fp32"},
    )


def test_a_checkpoint_saved_twice_at_one_step_is_swapped_whole(tmp_path: Path):
    from lorakit.training.checkpoint import check_checkpoint, complete_checkpoints, latest_checkpoint

    first = _checkpoint(tmp_path)
    second = _checkpoint(tmp_path)
    assert first == second and complete_checkpoints(tmp_path / "checkpoints") == [first]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert check_checkpoint(first)["global_step"] == 4
    assert latest_checkpoint(tmp_path / "checkpoints") == first


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("trainer_state.json", b'{"global_step": 4}', "key 'python_random' missing"),
        ("trainable.safetensors", b"", "empty"),
        ("rng.pt", b"PK\x03\x04 cut", "truncated: "),
        ("scheduler.pt", None, "missing"),
    ],
)
def test_latest_checkpoint_checks_the_newest(tmp_path: Path, name: str, content: bytes | None, reason: str):
    from lorakit.training.checkpoint import latest_checkpoint

    path = _checkpoint(tmp_path) / name
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    with pytest.raises(DamagedFile) as info:
        latest_checkpoint(tmp_path / "checkpoints")
    assert info.value.path == str(path) and info.value.reason.startswith(reason)
    assert path.exists() == (content is not None)  # nothing repaired or removed


def test_load_checkpoint_checks_what_torch_loaded(tmp_path: Path):
    import torch

    from lorakit.training.checkpoint import load_checkpoint

    folder = _checkpoint(tmp_path)
    assert load_checkpoint(folder)["state"]["global_step"] == 4
    torch.save({"not": "an optimizer"}, folder / "optimizer.pt")
    with pytest.raises(DamagedFile, match=r"optimizer.pt: damaged \(key 'state' missing\)"):
        load_checkpoint(folder)
    torch.save({"ranks": []}, folder / "optimizer.pt")
    torch.save({"ranks": []}, folder / "rng.pt")
    with pytest.raises(DamagedFile):
        load_checkpoint(folder)


def test_weights_that_do_not_fit_name_their_file(tmp_path: Path):
    import torch

    from lorakit.modeling.model import load_trainable_state

    model = torch.nn.Linear(2, 2)
    with pytest.raises(
        DamagedFile, match=r"w.safetensors: damaged \(does not fit the model: weight has shape"
    ):
        load_trainable_state(
            model, {"weight": torch.zeros(3, 2), "bias": torch.zeros(2)}, source=tmp_path / "w.safetensors"
        )
    with pytest.raises(RuntimeError, match="checkpoint does not fit the model: missing"):
        load_trainable_state(model, {"weight": torch.zeros(2, 2)})


def test_check_files_reads_every_record_of_a_folder(tmp_path: Path):
    layout = RunLayout(make_experiment(tmp_path, "a", status="preempted"))
    layout.check_files()
    layout.metrics.write_text('{"epoch_1": 0.5}', encoding="utf-8")
    with pytest.raises(DamagedFile, match=r"metrics.json: damaged \(key 'epoch_1': expected a JSON object"):
        layout.check_files()
