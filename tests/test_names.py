"""Names that become paths are validated where they enter (part of issue 12): an exp_id is one safe path
component, so nothing lorakit does can delete or write outside the experiment's own folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit.runs.layout import exp_id_problem


@pytest.fixture
def world(tmp_path: Path, label_map_file: Path):
    """An outputs folder holding one experiment (and its index), and a config for another."""
    out = tmp_path / "outputs"
    keep = out / "keep_me"
    keep.mkdir(parents=True)
    (keep / "run.json").write_text(json.dumps({"exp_id": "keep_me", "status": "completed"}), encoding="utf-8")
    (out / "experiment_index.json").write_text('{"experiments": {}, "active": {}}', encoding="utf-8")
    (tmp_path / "train.csv").write_text("text,label\n你好,低风险\n", encoding="utf-8")
    config = tmp_path / "exp.toml"
    config.write_text(
        'exp_id = "fine"\n[data]\nraw_data_path = "train.csv"\n'
        f'global_label_map = "{label_map_file.as_posix()}"\nlabel_subset = ["低风险", "高风险"]\n'
        '[model]\narch = "nowhere"\n',
        encoding="utf-8",
    )
    return out, config


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("exp_id", "problem"),
    [
        ("", "must be a non-empty name"),
        ("a/b", "is not a folder name"),
        ("/tmp/elsewhere", "is not a folder name"),
        ("..", "is not a folder name"),
        (".hidden", "is not a folder name"),
        ("x" * 129, "at most 128 characters"),
    ],
)
def test_unsafe_exp_ids_are_refused_and_nothing_is_touched(world, cli, exp_id: str, problem: str):
    out, config = world
    before = snapshot(out.parent)
    result = cli(
        "train", str(config), "--outputs", str(out), "--force", "--set", f"exp_id={json.dumps(exp_id)}"
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: exp_id: ") and problem in lines[0]
    assert snapshot(out.parent) == before  # every other experiment, and the index, survive
    assert (out / "keep_me" / "run.json").is_file()


def test_commands_taking_an_exp_id_resolve_it_inside_the_outputs_folder(world, cli, tmp_path: Path):
    out, _ = world
    other = tmp_path / "other" / "exp"
    other.mkdir(parents=True)
    (other / "run.json").write_text('{"exp_id": "exp", "status": "completed"}', encoding="utf-8")
    before = snapshot(tmp_path)
    for args in (("rollback", "--exp-id", "../other/exp"), ("show", "../other/exp")):
        result = cli(*args, "--outputs", str(out))
        assert result.returncode == 2, (args, result.stderr)
        assert "exp_id: " in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_good_names_pass():
    for name in ("exp_v4_double_label", "demo-1.2", "风险_v2", "_tmp", "a+b=c@d"):
        assert exp_id_problem(name) is None, name
