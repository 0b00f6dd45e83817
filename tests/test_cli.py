"""The CLI: version, help, config show, one-line errors with exit code 2, and no heavy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lorakit

HEAVY = ("torch", "transformers", "peft", "pandas", "accelerate")


def test_version(cli):
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"lorakit, version {lorakit.__version__}"


def test_config_show_provenance_names_both_files(cli):
    result = cli("config", "show", "configs/exp_v4_double_label.toml", "--provenance")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rank = next(line for line in lines if line.startswith("model.lora.rank "))
    dropout = next(line for line in lines if line.startswith("model.lora.dropout "))
    decay = next(line for line in lines if line.startswith("train.weight_decay "))
    assert rank.endswith("# configs/exp_v4_double_label.toml") and "= 16" in rank
    assert dropout.endswith("# configs/templates/bert_lora_template.toml")
    assert "train.epochs = 8" in result.stdout
    assert decay.endswith("# configs/templates/bert_lora_template.toml")
    assert any(line.endswith("# default") for line in lines)
    assert 'data.label_subset.risk_level = ["低风险", "中风险", "高风险"]' in result.stdout


def test_config_show_toml_and_json(cli):
    import json

    import tomllib

    toml = cli("config", "show", "configs/exp_v4_double_label.toml", "--set", "train.lr=1e-3")
    data = tomllib.loads(toml.stdout)
    assert data["train"]["lr"] == 1e-3 and data["data"]["label_subset"]["is_adopt"] == ["采纳", "不采纳"]
    js = json.loads(cli("config", "show", "configs/exp_v4_double_label.toml", "--json").stdout)
    assert js["provenance"]["train.loss_weight"].endswith("exp_v4_double_label.toml")


def test_user_errors_are_one_line_exit_2(cli, tmp_path: Path):
    (tmp_path / "a.toml").write_text('base_config = "b.toml"\n', encoding="utf-8")
    (tmp_path / "b.toml").write_text('base_config = "a.toml"\n', encoding="utf-8")
    cases = {
        "cycle": (str(tmp_path / "a.toml"), [], "base_config: cycle"),
        "missing base": (
            str(tmp_path / "m.toml"),
            [],
            "does not exist",
        ),
        "unknown key": ("configs/exp_v1_bert_baseline.toml", ["--set", "train.lrr=1"], "did you mean lr?"),
        "wrong type": (
            "configs/exp_v1_bert_baseline.toml",
            ["--set", 'train.epochs="x"'],
            "train.epochs: expected",
        ),
        "label": (
            "configs/exp_v1_bert_baseline.toml",
            ["--set", 'data.label_subset=["低风险", "无此标签"]'],
            "data.label_subset: labels ['无此标签'] are not in",
        ),
    }
    (tmp_path / "m.toml").write_text('base_config = "gone.toml"\nexp_id = "m"\n', encoding="utf-8")
    for name, (path, extra, expected) in cases.items():
        result = cli("config", "show", path, *extra)
        assert result.returncode == 2, (name, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (name, lines)
        assert expected in lines[0] and lines[0].startswith("Error: "), (name, lines)
        assert "Traceback" not in result.stderr


def test_verbose_shows_traceback(cli):
    result = cli("-v", "config", "show", "configs/exp_v1_bert_baseline.toml", "--set", "train.lrr=1")
    assert result.returncode == 2
    assert "Traceback" in result.stderr


def test_fast_commands_import_no_heavy_modules():
    probe = (
        "import sys\n"
        "from lorakit.cli import main\n"
        "for argv in (['--help'], ['plugins'], ['plugins', '--json'],"
        " ['config', 'show', 'configs/exp_v4_double_label.toml', '--provenance']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
