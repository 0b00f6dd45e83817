"""``lorakit sweep``: a grid over a base config → one child config per point, each queued; the children
inherit the base, the names are deterministic, every error is one line (exit 2) and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from lorakit.config.schema import load_config
from lorakit.scheduling.queue import JobQueue
from lorakit.sweep import SweepError, parse_grid, plan_sweep, value_text, write_sweep
from lorakit.testing import synthetic_frame

GRID = ["--grid", "train.lr=2e-3,5e-3", "--grid", "model.lora.rank=2,4"]
IDS = ["demo-lr2e-3-rank2", "demo-lr2e-3-rank4", "demo-lr5e-3-rank2", "demo-lr5e-3-rank4"]


@pytest.fixture
def project(tmp_path: Path, tiny_bert: Path) -> Path:
    """A tmp project: configs/demo.toml (a tiny single-label run, 1 epoch, 48 rows) and its data."""
    synthetic_frame(48, seed=5).to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.toml").write_text(
        "\n".join(
            [
                'exp_id = "demo"',
                "[data]",
                'raw_data_path = "../train.csv"',
                'cache_dir = "../cache"',
                'label_column = "risk_level"',
                "max_len = 32",
                "val_ratio = 0.25",
                "[model]",
                f'arch = "{tiny_bert.as_posix()}"',
                "[model.lora]",
                "rank = 4",
                "alpha = 8",
                "[train]",
                "batch_size = 16",
                "epochs = 1",
                "lr = 5e-3",
                "[resources]",
                'priority = "high"',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return tmp_path


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the jobs share this machine's few cores


def sweep_cli(project: Path, *args: str):
    return run_cli("sweep", "configs/demo.toml", *args, "--outputs", "out", cwd=project, env=ONE_THREAD)


def test_dry_run_lists_every_point_and_writes_nothing(project: Path):
    result = sweep_cli(project, *GRID, "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sweep demo-sweep-") and "4 point(s)" in lines[0] and "dry run" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == IDS
    assert lines[1].split()[1:] == ["train.lr=2e-3", "model.lora.rank=2"]
    assert not (project / "configs" / "sweeps").exists() and not (project / "out").exists()
    # the same sweep asked twice is the same sweep; a random sample is another one, of N points
    config, out = project / "configs" / "demo.toml", project / "out"
    again = plan_sweep(config, parse_grid(GRID[1::2]), outputs=out)
    assert again.sweep_id == lines[0].split()[1].rstrip(":")
    sample = plan_sweep(config, again.grid, random=3, seed=1, outputs=out)
    assert len(sample.points) == 3 and sample.sweep_id != again.sweep_id
    assert sample.points == plan_sweep(config, again.grid, random=3, seed=1, outputs=out).points
    # planning needs neither torch nor pandas: the dry run is as quick as `config show`
    probe = (
        "import sys\nfrom lorakit.cli import main\n"
        "try:\n    main(['sweep', 'configs/demo.toml', '--grid', 'train.lr=1,2', '--dry-run'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'pandas') if m in sys.modules))\n"
    )
    light = subprocess.run([sys.executable, "-c", probe], cwd=project, capture_output=True, text=True)
    assert light.stdout.strip().splitlines()[-1] == "[]", light.stderr


def test_children_inherit_the_base_and_carry_the_sweep_id(project: Path):
    base = project / "configs" / "demo.toml"
    text = base.read_text(encoding="utf-8")
    base.write_text(text + '[sweep]\ngrid = {"train.lr" = [2e-3, 5e-3], "model.lora.rank" = [2, 4]}\n')
    load_config(base)  # the [sweep] table is no unknown key for training
    result = sweep_cli(project)
    assert result.returncode == 0, result.stderr
    sweep_id = result.stdout.split()[1].rstrip(":")
    # the table's grid and --grid's are one sweep
    assert plan_sweep(base, parse_grid(GRID[1::2]), outputs=project / "elsewhere").sweep_id == sweep_id
    folder = project / "configs" / "sweeps" / sweep_id
    assert sorted(p.stem for p in folder.glob("*.toml")) == sorted(IDS)
    cfg, raw = load_config(folder / "demo-lr5e-3-rank2.toml")
    assert (cfg.exp_id, cfg.sweep, cfg.train.lr, cfg.model.lora.rank) == (IDS[2], sweep_id, 5e-3, 2)
    assert (cfg.train.batch_size, cfg.model.lora.alpha, cfg.resources.priority) == (16, 8, "high")
    assert Path(cfg.data.raw_data_path) == (project / "train.csv").resolve()
    assert raw.provenance["train.batch_size"] == str(base)
    jobs = JobQueue(project / "out").jobs()
    assert [(j.exp_id, j.priority, j.batch) for j in jobs] == [(i, "high", sweep_id) for i in IDS]
    assert [line.split()[2] for line in result.stdout.splitlines()[1:-1]] == IDS
    assert f"lorakit compare --filter sweep={sweep_id}" in result.stdout.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "train.lr"], "--grid 'train.lr': expected KEY=V1,V2"),
        (["--grid", "train.lrr=2e-3,5e-3"], "train.lrr: unknown key (did you mean lr?) (--grid)"),
        (["--grid", "train.lr="], "--grid train.lr: empty value list"),
        (["--grid", "train.lr=2e-3,5e-3", "--random", "3"], "--random 3: the grid has 2 point(s)"),
        (["--grid", "train.epochs=1,0"], "train.epochs: must be positive"),
        (["--grid", "exp_id=a,b"], "--grid exp_id: a sweep sets exp_id itself"),
        ([], "no grid to sweep; give --grid KEY=V1,V2 or a [sweep] table"),
    ],
)
def test_errors_are_one_line_exit_2_and_write_nothing(project: Path, args: list[str], message: str):
    result = sweep_cli(project, *args)
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert message in result.stderr
    assert not (project / "configs" / "sweeps").exists() and not (project / "out").exists()


def test_exp_ids_taken_in_the_queue_are_refused(project: Path):
    assert sweep_cli(project, *GRID).returncode == 0
    written = sorted((project / "configs" / "sweeps").rglob("*"))
    result = sweep_cli(project, *GRID[:2], "--grid", "model.lora.rank=2,8")  # two of them queued already
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "2 of the sweep's exp_ids are taken already: demo-lr2e-3-rank2 (job 1, queued)" in result.stderr
    assert sorted((project / "configs" / "sweeps").rglob("*")) == written
    assert len(JobQueue(project / "out").jobs()) == 4


def test_grid_values_read_as_toml_and_name_points_shortly():
    grid = parse_grid(
        ["train.lr=1e-4,2.5e-5,0.1", "model.arch=bert-base-chinese,./m", "train.loss_weight=[1,2]"]
    )
    assert grid == {
        "train.lr": [1e-4, 2.5e-5, 0.1],
        "model.arch": ["bert-base-chinese", "./m"],
        "train.loss_weight": [[1, 2]],
    }
    assert [value_text(v) for v in (1e-4, 2.5e-5, 0.1, 1.0, True, [1, 2])] == [
        "1e-4",
        "2.5e-5",
        "0.1",
        "1.0",
        "true",
        "[1,2]",
    ]
    with pytest.raises(SweepError, match="given twice"):
        parse_grid(["train.lr=1", "train.lr=2"])


def test_a_relative_path_in_the_grid_names_the_same_file_from_the_child(project: Path, monkeypatch):
    monkeypatch.chdir(project)  # --grid paths are relative to the working directory
    (project / "other.csv").write_bytes((project / "train.csv").read_bytes())
    plan = plan_sweep("configs/demo.toml", {"data.raw_data_path": ["train.csv", "other.csv"]}, outputs="out")
    assert [p.exp_id for p in plan.points] == ["demo-raw_data_pathtrain.csv", "demo-raw_data_pathother.csv"]
    write_sweep(plan)
    cfg, _ = load_config(plan.points[1].path)
    assert Path(cfg.data.raw_data_path) == (project / "other.csv").resolve()
    assert 'raw_data_path = "../../../other.csv"' in plan.points[1].path.read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_2x2_sweep_of_tiny_runs_completes_through_the_queue_and_compare_ranks_the_four(project: Path):
    queued = sweep_cli(project, *GRID)
    assert queued.returncode == 0, queued.stderr
    sweep_id = queued.stdout.split()[1].rstrip(":")
    run = run_cli(
        *("scheduler", "--outputs", "out", "--exit-when-done", "--gpu-pool", "cpu"),
        *("--max-parallel", "2", "--poll-interval", "0.1"),
        cwd=project,
        env=ONE_THREAD,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert {job.state for job in JobQueue(project / "out").jobs()} == {"done"}
    ranked = run_cli(
        *("compare", "--filter", f"sweep={sweep_id}", "--sort-by", "avg_f1", "--format", "json"),
        *("--outputs", "out"),
        cwd=project,
        env=ONE_THREAD,
    )
    assert ranked.returncode == 0, ranked.stderr
    rows = json.loads(ranked.stdout)
    assert sorted(row["exp_id"] for row in rows) == sorted(IDS)
    scores = [row["avg_f1"] for row in rows]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)
    assert os.path.isfile(project / "out" / rows[0]["exp_id"] / "config_copy.toml")
