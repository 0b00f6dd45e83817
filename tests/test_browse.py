"""``lorakit ls``, ``compare``, ``show``, ``rollback``, ``index rebuild`` on fake experiment folders.

Most cases run in-process through click's CliRunner (fast); the user-facing behaviours (same rows after the
index is lost, one-line errors, rollback, no heavy imports) run the real command in a subprocess.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_index import ADOPT, RISK, make_experiment

from lorakit.cli import cli as lorakit_cli
from lorakit.commands.browse import sparkline
from lorakit.errors import LorakitError
from lorakit.runs.index import ExperimentIndex

TOPIC = ["贷款", "理财", "保险"]
HEAVY = ("torch", "transformers", "peft", "pandas", "accelerate")


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    make_experiment(
        out, "exp_v1_bert_baseline", lr=2e-4, f1s=[0.78, 0.85, 0.88], create_time="2024-05-20 14:30:00"
    )
    make_experiment(
        out,
        "exp_v2_bert_lr1e-4",
        lr=1e-4,
        f1s=[0.8, 0.87, 0.89],
        create_time="2024-05-21 09:10:00",
        device="GPU-1",
    )
    make_experiment(
        out,
        "exp_v3_ernie",
        model="nghuyong/ernie-3.0-base-zh",
        rank=8,
        lr=3e-4,
        f1s=[0.7],
        status="failed",
        create_time="2024-05-21 15:00:00",
    )
    double = {"risk_level": RISK, "is_adopt": ADOPT}
    make_experiment(
        out, "exp_v4_double_label", tasks=double, f1s=[0.82, 0.93, 0.92], create_time="2024-05-22 10:15:00"
    )
    make_experiment(
        out,
        "exp_v4_double_label_r32",
        tasks=double,
        rank=32,
        f1s=[0.83, 0.925],
        seed=7,
        create_time="2024-05-23 11:00:00",
    )
    make_experiment(
        out,
        "exp_v5_triple",
        tasks={**double, "topic": TOPIC},
        f1s=[0.6, 0.7],
        status="running",
        create_time="2024-05-24 08:00:00",
    )
    ExperimentIndex(out).rebuild()
    return out


def invoke(*args: str, outputs: Path | None = None):
    extra = ["--outputs", str(outputs)] if outputs is not None else []
    return CliRunner().invoke(lorakit_cli, [*args, *extra], catch_exceptions=True)


def ids_of(result) -> list[str]:
    assert result.exit_code == 0, (result.output, result.exception)
    return [row["exp_id"] for row in json.loads(result.stdout)]


def run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "lorakit", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- ls -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_ls_gives_the_same_rows_after_the_index_is_lost(outputs: Path, damage: str):
    before = run("ls", "--json", "--outputs", str(outputs))
    assert before.returncode == 0, before.stderr
    assert before.stderr == ""
    index = outputs / "experiment_index.json"
    if damage == "delete":
        index.unlink()
    else:
        index.write_bytes(index.read_bytes()[:777])
    after = run("ls", "--json", "--outputs", str(outputs))
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert len(json.loads(after.stdout)) == 6
    assert after.stderr.startswith("Warning: experiment index") and "rebuilt from 6" in after.stderr
    assert len(after.stderr.strip().splitlines()) == 1
    again = run("ls", "--json", "--outputs", str(outputs))  # the rebuilt index was written back
    assert again.stderr == "" and again.stdout == before.stdout


def test_ls_table_columns_and_active_marker(outputs: Path):
    ExperimentIndex(outputs).set_active("exp_v2_bert_lr1e-4", user="alice")
    result = invoke("ls", outputs=outputs)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "exp_id",
        "task_type",
        "model",
        "rank",
        "lr",
        "batch",
        "status",
        "avg_f1",
        "created",
        "device",
        "precision",
    ]
    assert [line.split()[0] for line in lines[2:8]] == [
        "exp_v1_bert_baseline",
        "exp_v2_bert_lr1e-4",
        "exp_v3_ernie",
        "exp_v4_double_label",
        "exp_v4_double_label_r32",
        "exp_v5_triple",
    ]
    v2 = next(line for line in lines if line.startswith("exp_v2"))
    assert v2.startswith("exp_v2_bert_lr1e-4 *") and "0.8900" in v2 and "2024-05-21 09:10" in v2
    assert "ernie-3.0-base-zh" in result.stdout and "nghuyong/" not in result.stdout
    assert lines[-1].startswith("* active experiment")
    rows = json.loads(invoke("ls", "--json", outputs=outputs).stdout)
    assert [r["exp_id"] for r in rows if r["active"]] == ["exp_v2_bert_lr1e-4"]


def test_ls_csv(outputs: Path):
    result = invoke("ls", "--csv", "--filter", "exp_id=exp_v4*", outputs=outputs)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["exp_id"] for r in rows] == ["exp_v4_double_label", "exp_v4_double_label_r32"]
    assert rows[0]["best"] == "0.93" and rows[1]["rank"] == "32"


def test_ls_empty_outputs(tmp_path: Path):
    result = invoke("ls", outputs=tmp_path / "nothing")
    assert result.exit_code == 0 and "No experiments" in result.stderr
    assert json.loads(invoke("ls", "--json", outputs=tmp_path / "nothing").stdout) == []


# ---- filters ------------------------------------------------------------------------------------------

V1, V2, V3 = "exp_v1_bert_baseline", "exp_v2_bert_lr1e-4", "exp_v3_ernie"
V4, V4R, V5 = "exp_v4_double_label", "exp_v4_double_label_r32", "exp_v5_triple"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["task_type=multi_cls"], [V4, V4R, V5]),  # two or more tasks
        (["task_type=double_cls"], [V4, V4R]),
        (["task_type!=multi_cls"], [V1, V2, V3]),
        (["status!=completed"], [V3, V5]),
        (["status=failed|running"], [V3, V5]),  # | is OR
        (["status!=failed|running"], [V1, V2, V4, V4R]),  # != with | is "neither"
        (["lr>1e-4"], [V1, V3]),
        (["lr>=1e-4"], [V1, V2, V3]),
        (["lr<1e-4"], [V4, V4R, V5]),
        (["lr<=0.0001"], [V2, V4, V4R, V5]),
        (["lr=0.0002"], [V1]),  # numeric: 0.0002 == 2e-4
        (["lr==2e-4"], [V1]),
        (["exp_id=exp_v4*"], [V4, V4R]),  # glob
        (["exp_id!=exp_v4*"], [V1, V2, V3, V5]),
        (["model=*ernie*"], [V3]),
        (["rank>=16", "task_type=multi_cls", "status=completed"], [V4, V4R]),  # AND
        (["task_type=multi_cls", "rank>16"], [V4R]),
        (["avg_f1>=0.9"], [V4, V4R]),  # best metric
        (["risk_level_f1>0.92"], [V4, V4R]),
        (["is_adopt_f1>0"], [V4, V4R, V5]),
        (["train.lr=2e-4"], [V1]),  # dotted config key from config_copy.toml
        (["model.lora.rank=32|8"], [V3, V4R]),
        (["seed!=42"], [V4R]),  # plain config key, not in the entry
        (["config.train.batch_size=32", "key_params.lr=3e-4"], [V3]),
        (["created>=2024-05-23"], [V4R, V5]),  # text comparison when not numbers
        (["device=GPU-1"], [V2]),
        (["tasks=*topic*"], [V5]),
        (["loss_weight=[0.5, 0.5]"], [V4, V4R]),  # lists compare as data
        (["loss_weight=[0.5,0.5]|[0.33,0.33,0.33]"], [V4, V4R, V5]),
    ],
)
def test_filters(outputs: Path, filters: list[str], expected: list[str]):
    args = [arg for f in filters for arg in ("--filter", f)]
    assert ids_of(invoke("ls", "--json", *args, outputs=outputs)) == expected
    assert ids_of(invoke("compare", "--format", "json", *args, outputs=outputs)) == expected


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ("lrr=1", "no experiment has a key 'lrr' (did you mean lr?)"),
        ("avg_f2>0.5", "did you mean avg_f1?"),
        ("lr", "expected KEY<op>VALUE"),
        ("lr>=", "expected KEY<op>VALUE"),
    ],
)
def test_bad_filters_are_user_errors(outputs: Path, flt: str, message: str):
    result = invoke("compare", "--filter", flt, outputs=outputs)
    assert isinstance(result.exception, LorakitError)
    assert message in str(result.exception)


# ---- sort ---------------------------------------------------------------------------------------------


def test_sort_desc_asc_missing_last(outputs: Path):
    make_experiment(outputs, "exp_v6_started", status="running", f1s=[], create_time="2024-05-25 08:00:00")
    (outputs / "exp_v6_started" / "metrics.json").unlink()
    ExperimentIndex(outputs).sync("exp_v6_started")
    desc = ids_of(invoke("ls", "--json", "--sort-by", "avg_f1", outputs=outputs))
    assert desc == [V4, V4R, V2, V1, V3, V5, "exp_v6_started"]  # ties (0.7) keep created order
    asc = ids_of(invoke("compare", "--format", "json", "--sort-by", "avg_f1", "--asc", outputs=outputs))
    assert asc == [V3, V5, V1, V2, V4R, V4, "exp_v6_started"]
    by_f1 = ids_of(
        invoke("compare", V1, V4, V5, "--sort-by", "risk_level_f1", "--format", "json", outputs=outputs)
    )
    assert by_f1 == [V4, V1, V5]
    by_lr = ids_of(
        invoke("ls", "--json", "--sort-by", "lr", "--asc", "--filter", "status=completed", outputs=outputs)
    )
    assert by_lr[-2:] == [V2, V1]


def test_ls_sort_by_other_metric_adds_its_column(outputs: Path):
    result = invoke("ls", "--sort-by", "risk_level_f1", "--filter", "task_type=double_cls", outputs=outputs)
    assert result.stdout.splitlines()[0].split()[7:9] == ["avg_f1", "risk_level_f1"]


# ---- compare ------------------------------------------------------------------------------------------


def test_compare_columns_and_formats(outputs: Path):
    result = invoke("compare", V4, V1, "--format", "json", outputs=outputs)
    rows = json.loads(result.stdout)
    assert [r["exp_id"] for r in rows] == [V4, V1]  # the order given
    assert list(rows[0])[:7] == ["exp_id", "task_type", "status", "precision", "model", "backbone", "method"]
    assert rows[0]["avg_f1"] == 0.93 and rows[0]["is_adopt_f1"] == 0.92 and rows[1]["is_adopt_f1"] is None
    assert rows[0]["loss_weight"] == [0.5, 0.5] and rows[0]["best_epoch"] == 2
    md = invoke("compare", V4, V1, "--format", "markdown", outputs=outputs).stdout.splitlines()
    assert md[0].startswith("| exp_id") and md[1].startswith("|---")
    rows_csv = invoke("compare", "exp_v4*", "--format", "csv", outputs=outputs).stdout
    assert [r["exp_id"] for r in csv.DictReader(io.StringIO(rows_csv))] == [V4, V4R]
    table = invoke("compare", V4, V4R, outputs=outputs).stdout
    assert "0.9300" in table and "[0.5,0.5]" in table


def test_compare_only_changed(outputs: Path):
    result = invoke("compare", V4, V4R, "--only-changed", "--format", "json", outputs=outputs)
    rows = json.loads(result.stdout)
    changed = [
        c
        for c in rows[0]
        if c not in ("exp_id", "precision", "best_epoch") and not c.endswith(("f1", "accuracy", "loss"))
    ]
    assert "precision" in rows[0]  # the precision used is always shown, changed or not
    assert changed == ["description", "seed", "model.lora.rank", "model.lora.alpha"]
    assert rows[1]["seed"] == 7 and rows[1]["model.lora.rank"] == 32
    pair = json.loads(invoke("compare", V1, V2, "--only-changed", "--format", "json", outputs=outputs).stdout)
    assert "train.lr" in pair[0] and "seed" not in pair[0] and "model.lora.rank" not in pair[0]
    # A key present in one config only is a change.
    make_experiment(outputs, "exp_v7_tagged", lr=1e-4, extra_config='tag = "x"')
    ExperimentIndex(outputs).sync("exp_v7_tagged")
    tagged = json.loads(
        invoke("compare", V2, "exp_v7_tagged", "--only-changed", "--format", "json", outputs=outputs).stdout
    )
    assert tagged[0]["tag"] is None and tagged[1]["tag"] == "x"


def test_label_set_warning(outputs: Path):
    mixed = invoke("compare", V1, V4, V5, "--sort-by", "avg_f1", outputs=outputs)
    warning = [line for line in mixed.stderr.splitlines() if line.startswith("Warning: label sets differ")]
    assert len(warning) == 1
    assert f"{V1} has risk_level[低风险,中风险,高风险];" in warning[0]
    assert f"{V4} has risk_level[低风险,中风险,高风险] + is_adopt[采纳,不采纳]" in warning[0]
    assert "topic[贷款,理财,保险]" in warning[0]
    same = invoke("compare", V4, V4R, "--sort-by", "avg_f1", outputs=outputs)
    assert "label sets differ" not in same.stderr
    ranked = invoke("ls", "--sort-by", "avg_f1", outputs=outputs)
    assert "label sets differ" in ranked.stderr
    assert "label sets differ" not in invoke("ls", outputs=outputs).stderr  # not ranked


def test_compare_unknown_experiment_is_one_line_error(outputs: Path):
    result = run("compare", "exp_v4_double_labl", "--outputs", str(outputs))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: no experiment 'exp_v4_double_labl' in {outputs.resolve()}"
        " (did you mean exp_v4_double_label?)"
    ]


# ---- show ---------------------------------------------------------------------------------------------


def test_sparkline():
    assert sparkline([0.1, 0.5, 0.9]) == "▁▅█"
    assert sparkline([0.5, 0.5]) == "▄▄" and sparkline([]) == ""


def test_show(outputs: Path):
    result = invoke("show", V4, outputs=outputs)
    assert result.exit_code == 0, result.output
    text = result.stdout
    for section in ("Metrics", "Paths", "Environment", "Config ("):
        assert f"\n{section}" in text
    assert "status          completed" in text and "task is_adopt   采纳, 不采纳" in text
    assert "avg_f1  ▁█▇  0.8200 → 0.9200  (best 0.9300 at epoch 2" in text
    assert "  2 *" in text and "torch 2.13.0" in text and "peak_memory   2048 MB" in text
    assert 'risk_level = ["低风险", "中风险", "高风险"]' in text
    data = json.loads(invoke("show", V4, "--json", outputs=outputs).stdout)
    assert data["config"]["model"]["lora"]["rank"] == 16 and data["metrics"]["best"]["epoch"] == 2
    missing = invoke("show", "exp_v4_doubel_label", outputs=outputs)
    assert "did you mean exp_v4_double_label?" in str(missing.exception)


# ---- rollback -----------------------------------------------------------------------------------------


def test_rollback_undo_and_refusals_via_the_real_command(outputs: Path, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    env = {"LORAKIT_OUTPUTS": str(outputs)}
    index = ExperimentIndex(outputs)

    first = run("rollback", "--exp-id", V1, cwd=work, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == f"Active experiment: {V1} (was none)."
    assert (work / "configs" / f"{V1}.toml").is_file()
    second = run("rollback", "--exp-id", V4, cwd=work, env=env)
    assert second.stdout.splitlines()[0] == f"Active experiment: {V4} (was {V1})."
    assert index.active() == V4  # what `lorakit predict` with no EXP uses
    history = index.active_state()["history"]
    assert [(h["exp_id"], h["previous"]) for h in history] == [(V1, None), (V4, V1)]
    assert all(h["user"] and h["time"] for h in history)

    undo = run("rollback", cwd=work, env=env)
    assert undo.returncode == 0 and undo.stdout.splitlines()[0] == f"Back to {V1} (was {V4})."
    assert index.active() == V1
    nothing = run("rollback", cwd=work, env=env)
    assert nothing.returncode == 2 and "no earlier active experiment" in nothing.stderr
    assert index.active() == V1

    for target, message in (
        (V3, "its status is 'failed'"),
        (V5, "its status is 'running'"),
        ("exp_v9", "no experiment 'exp_v9'"),
    ):
        refused = run("rollback", "--exp-id", target, cwd=work, env=env)
        assert refused.returncode == 2
        assert len(refused.stderr.strip().splitlines()) == 1 and message in refused.stderr
    assert index.active() == V1
    assert run("ls", env=env).stdout.splitlines()[2].startswith(f"{V1} *")


def test_undo_walks_back_through_history(outputs: Path, tmp_path: Path):
    from lorakit.runs.rollback import rollback

    configs = tmp_path / "cfg"
    for exp in (V1, V2, V4, V2):
        rollback(exp, outputs=outputs, configs_dir=configs, user="u")
    assert [rollback(None, outputs=outputs, configs_dir=configs).exp_id for _ in range(3)] == [V4, V2, V1]
    assert rollback(V1, outputs=outputs, configs_dir=configs).changed is False


def test_rollback_survives_index_rebuild_and_loss(outputs: Path, tmp_path: Path):
    from lorakit.runs.rollback import rollback

    rollback(V2, outputs=outputs, configs_dir=tmp_path / "cfg")
    assert "(active: exp_v2_bert_lr1e-4)" in invoke("index", "rebuild", outputs=outputs).stdout
    (outputs / "experiment_index.json").unlink()
    result = invoke("index", "rebuild", outputs=outputs)
    assert (
        result.stdout.strip() == f"Rebuilt {outputs / 'experiment_index.json'}: 6 experiments (active: {V2})."
    )
    assert ExperimentIndex(outputs).active() == V2


def test_rollback_restores_config_with_backup(outputs: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy_text = (outputs / V4 / "config_copy.toml").read_text(encoding="utf-8")
    target = tmp_path / "configs" / f"{V4}.toml"
    target.parent.mkdir()
    target.write_text(copy_text.replace("lr = 2e-05", "lr = 0.001"), encoding="utf-8")
    result = invoke("rollback", "--exp-id", V4, outputs=outputs)
    assert result.exit_code == 0, result.output
    backups = list(target.parent.glob(f"{V4}.toml.bak-*"))
    assert len(backups) == 1 and "lr = 0.001" in backups[0].read_text(encoding="utf-8")
    restored = target.read_text(encoding="utf-8")
    assert restored.startswith("# Restored by `lorakit rollback`") and restored.endswith(copy_text)
    assert f"previous file is kept as configs/{backups[0].name}" in result.stdout
    # Rolling back again changes nothing: the restored file matches.
    invoke("rollback", "--exp-id", V1, outputs=outputs)
    again = invoke("rollback", "--exp-id", V4, outputs=outputs)
    assert "already matches" in again.stdout and len(list(target.parent.glob("*.bak-*"))) == 1


def test_rollback_keeps_a_child_config_that_merges_to_the_same(tmp_path: Path, repo: Path):
    """configs/<exp>.toml is usually a short child of a template: same merged config → left as is."""
    from lorakit.config.render import to_toml
    from lorakit.config.schema import load_config, to_dict
    from lorakit.runs.rollback import rollback

    shutil.copytree(repo / "configs", tmp_path / "configs")
    shutil.copytree(repo / "data", tmp_path / "data", ignore=shutil.ignore_patterns("processed"))
    child = tmp_path / "configs" / "exp_v1_bert_baseline.toml"
    cfg, _ = load_config(child)
    outputs = tmp_path / "outputs"
    folder = make_experiment(outputs, "exp_v1_bert_baseline")
    (folder / "config_copy.toml").write_text(to_toml(to_dict(cfg)), encoding="utf-8")
    ExperimentIndex(outputs).rebuild()
    original = child.read_text(encoding="utf-8")
    result = rollback("exp_v1_bert_baseline", outputs=outputs, configs_dir=tmp_path / "configs")
    assert result.config_action == "unchanged" and child.read_text(encoding="utf-8") == original
    child.write_text(original.replace("lr = 2e-4", "lr = 5e-4"), encoding="utf-8")
    make_experiment(outputs, "other")
    rollback("other", outputs=outputs, configs_dir=tmp_path / "configs")
    result = rollback("exp_v1_bert_baseline", outputs=outputs, configs_dir=tmp_path / "configs")
    assert result.config_action == "restored" and result.backup_path is not None
    assert "lr = 5e-4" in result.backup_path.read_text(encoding="utf-8")
    restored, _ = load_config(child)
    assert to_dict(restored) == to_dict(cfg)


# ---- imports ------------------------------------------------------------------------------------------


def test_browse_commands_import_no_heavy_modules(outputs: Path, tmp_path: Path):
    code = f"""
import sys
from lorakit.cli import main
for args in (["ls"], ["ls", "--json", "--filter", "train.lr>0"], ["compare", "--only-changed"],
             ["compare", "--sort-by", "avg_f1", "--format", "markdown"], ["show", "{V4}"],
             ["rollback", "--exp-id", "{V4}", "--configs-dir", {str(tmp_path / "cfg")!r}],
             ["index", "rebuild"]):
    try:
        main([*args, "--outputs", {str(outputs)!r}])
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print("HEAVY", heavy)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []"
