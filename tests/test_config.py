"""Config loading: inheritance, paths, pkg://, overrides, provenance, and errors that name key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.config import load_config, load_raw, parse_override
from lorakit.config.schema import defaults_provenance
from lorakit.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def chain(tmp_path: Path, label_map_file: Path) -> Path:
    write(tmp_path / "data" / "train.csv", "text,label\n")
    write(
        tmp_path / "templates" / "base.toml",
        f"""
exp_id = "base"
[data]
raw_data_path = "../data/train.csv"
global_label_map = "{label_map_file.as_posix()}"
label_subset = ["低风险", "高风险"]
max_len = 64
[model]
arch = "bert-base-chinese"
[model.lora]
rank = 8
alpha = 16
[train]
lr = 1e-4
batch_size = 16
""",
    )
    write(
        tmp_path / "templates" / "mid.toml",
        'base_config = "base.toml"\nexp_id = "mid"\n[train]\nbatch_size = 8\n',
    )
    return write(
        tmp_path / "exps" / "child.toml",
        'base_config = "../templates/mid.toml"\nexp_id = "child"\n[model.lora]\nrank = 4\n[train]\nepochs = 2\n',
    )


def test_chain_merges_deeply_and_records_provenance(chain: Path, tmp_path: Path):
    cfg, raw = load_config(chain)
    assert cfg.exp_id == "child"
    assert cfg.model.lora.rank == 4 and cfg.model.lora.alpha == 16  # tables merge deeply
    assert cfg.train.batch_size == 8 and cfg.train.lr == 1e-4 and cfg.train.epochs == 2
    # the data path was written in templates/, so it resolves from there, not from exps/
    assert Path(cfg.data.raw_data_path) == (tmp_path / "data" / "train.csv").resolve()
    assert raw.provenance["model.lora.rank"].endswith("child.toml")
    assert raw.provenance["model.lora.alpha"].endswith("base.toml")
    assert raw.provenance["train.batch_size"].endswith("mid.toml")
    prov = defaults_provenance(raw, cfg)
    assert prov["train.weight_decay"] == "default"
    assert [p.name for p in raw.files] == ["child.toml", "mid.toml", "base.toml"]


def test_arrays_replace_not_append(chain: Path):
    cfg, _ = load_config(chain, ['data.label_subset=["中风险", "低风险"]'])
    assert cfg.data.label_subset == ["中风险", "低风险"]


def test_overrides_parse_toml_values(chain: Path):
    cfg, raw = load_config(
        chain, ["train.lr=3e-5", "train.loss_weight=[1.0]", "model.arch=bert-base-uncased"]
    )
    assert cfg.train.lr == 3e-5
    assert cfg.train.loss_weight == [1.0]
    assert cfg.model.arch == "bert-base-uncased"
    assert raw.provenance["train.lr"] == "--set"
    assert parse_override("train.group_by_length=false") == ("train.group_by_length", False)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.lr")


def test_pkg_paths_resolve_inside_installed_packages(chain: Path):
    import pluggy

    cfg, _ = load_config(chain, ['data.raw_data_path="pkg://pluggy/__init__.py"'])
    assert Path(cfg.data.raw_data_path) == Path(pluggy.__file__)
    with pytest.raises(ConfigError, match="package 'no_such_pkg_xyz'"):
        load_config(chain, ['data.raw_data_path="pkg://no_such_pkg_xyz/a.csv"'])


def test_model_arch_hub_id_is_not_a_path(chain: Path, tmp_path: Path):
    cfg, _ = load_config(chain)
    assert cfg.model.arch == "bert-base-chinese"
    (tmp_path / "exps" / "tiny-model").mkdir()
    cfg, _ = load_config(chain, ['model.arch="./tiny-model"'], cwd=tmp_path / "exps")
    assert Path(cfg.model.arch) == (tmp_path / "exps" / "tiny-model").resolve()


def test_cycle_is_an_error(tmp_path: Path):
    write(tmp_path / "a.toml", 'base_config = "b.toml"\n')
    write(tmp_path / "b.toml", 'base_config = "a.toml"\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "a.toml")
    (line,) = info.value.lines()
    assert line.startswith("base_config: cycle a.toml -> b.toml -> a.toml")
    assert "b.toml" in line


def test_missing_base_is_an_error(tmp_path: Path):
    write(tmp_path / "a.toml", 'base_config = "nope.toml"\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "a.toml")
    (line,) = info.value.lines()
    assert "nope.toml does not exist" in line and str(tmp_path / "a.toml") in line


def test_every_problem_is_reported_together_with_its_file(chain: Path):
    with pytest.raises(ConfigError) as info:
        load_config(chain, ["train.lrr=1", "resources.priority=urgent", "train.epochs=0"])
    lines = info.value.lines()
    assert "train.lrr: unknown key (did you mean lr?) (--set)" in lines
    assert any(
        line.startswith("resources.priority: 'urgent' is not one of low, medium, high") for line in lines
    )
    assert any(line.startswith("train.epochs: must be positive") for line in lines)


def test_wrong_type_names_key_and_file(chain: Path):
    child = chain.read_text(encoding="utf-8").replace("epochs = 2", 'epochs = "two"')
    chain.write_text(child, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(chain)
    (line,) = info.value.lines()
    assert line == f"train.epochs: expected an integer, got str 'two' ({chain})"


def test_subset_label_missing_from_global_map(chain: Path):
    with pytest.raises(ConfigError) as info:
        load_config(chain, ['data.label_subset=["低风险", "超高风险"]'])
    (line,) = info.value.lines()
    assert line.startswith("data.label_subset: labels ['超高风险'] are not in ")
    assert line.endswith("(--set)")


def test_task_type_must_agree_with_label_columns(chain: Path):
    with pytest.raises(ConfigError, match="task_type: 'double_cls' disagrees"):
        load_config(chain, ["task_type=double_cls"])
    cfg, _ = load_config(
        chain,
        [
            'data.label_subset={risk_level=["低风险","高风险"], is_adopt=["采纳","不采纳"]}',
            "task_type=multi_cls",
        ],
    )
    assert cfg.task_columns == ["risk_level", "is_adopt"]
    assert cfg.derived_task_type == "double_cls"


def test_loss_weight_length_checked(chain: Path):
    with pytest.raises(ConfigError, match=r"train.loss_weight: has 2 weights for 1 task"):
        load_config(chain, ["train.loss_weight=[0.5, 0.5]"])


def test_dict_source_resolves_relative_to_cwd(tmp_path: Path, label_map_file: Path):
    raw = load_raw({"exp_id": "x", "data": {"raw_data_path": "d.csv"}, "model": {"arch": "m"}}, cwd=tmp_path)
    assert raw.data["data"]["raw_data_path"] == str((tmp_path / "d.csv").resolve())


def test_every_shipped_config_validates(repo: Path, lorakit_plugins_factory):
    from test_plugin_packages import plugin_module

    configs = sorted((repo / "configs").rglob("*.toml"))
    assert len(configs) >= 4
    # the adapter configs' [model.bottleneck] tables belong to lorakit-adapters (loaded from source)
    lorakit_plugins_factory(plugin_module("lorakit-adapters"))
    for path in configs:
        text = path.read_text(encoding="utf-8")
        assert text.splitlines()[0].startswith("#"), f"{path} must start with a comment giving its command"
        assert ("adapter" in path.name) == ("bottleneck" in text), path
        load_config(path)
