"""Range checks (issue 12): every numeric and choice key is checked when the config loads, the checks that
need the model (max_len against positions and special tokens, target modules) when it loads; each problem
is one ``key: problem (file)`` line. Config files that are not UTF-8, FIFOs or folders are one line too."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from lorakit.config import load_config
from lorakit.errors import ConfigError, DataError

TASKS = {"risk_level": ["低风险", "中风险", "高风险"], "is_adopt": ["采纳", "不采纳"]}


def config(**top) -> dict:
    base = {
        "exp_id": "r",
        "data": {"raw_data_path": "train.csv", "label_subset": TASKS},
        "model": {"arch": "m"},
    }
    return {**base, **top}


def problems(overrides: list[str], source: dict | Path | None = None, cwd: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(source if source is not None else config(), overrides, cwd=cwd)
    return info.value.lines()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr=nan", "train.lr: must be a finite number > 0, got nan (--set)"),
        ("train.lr=inf", "train.lr: must be a finite number > 0, got inf (--set)"),
        ("train.lr=0", "train.lr: must be a finite number > 0, got 0.0 (--set)"),
        (
            "train.max_grad_norm=-1.0",
            "train.max_grad_norm: must be a finite number >= 0 (0 or unset: no clipping), got -1.0",
        ),
        ("train.weight_decay=-0.1", "train.weight_decay: must be a finite number >= 0, got -0.1"),
        ("train.weight_decay=nan", "train.weight_decay: must be a finite number >= 0, got nan"),
        ("train.warmup_ratio=1", "train.warmup_ratio: must be in [0, 1), got 1.0"),
        ("model.lora.dropout=1.0", "model.lora.dropout: must be in [0, 1), got 1.0"),
        ("model.dora.dropout=-0.5", "model.dora.dropout: must be in [0, 1), got -0.5"),
        ("model.head_dropout=nan", "model.head_dropout: must be in [0, 1), got nan"),
        ("model.heads.risk_level.dropout=1.5", "model.heads.risk_level.dropout: must be in [0, 1), got 1.5"),
        (
            "model.heads.risk_level.hidden_size=0",
            "model.heads.risk_level.hidden_size: must be positive, got 0",
        ),
        ("model.head_hidden_size=-4", "model.head_hidden_size: must be positive, got -4"),
        ("model.lora.alpha=0", "model.lora.alpha: must be positive, got 0"),
        ("model.lora.bias='some'", "model.lora.bias: 'some' is not one of none, all, lora_only"),
        ("seed=-1", "seed: must be >= 0, got -1"),
        ("data.sample_seed=-2", "data.sample_seed: must be >= 0, got -2"),
        ("data.max_rows=0", "data.max_rows: must be positive, got 0"),
        ("resources.memory_mb=0", "resources.memory_mb: must be positive, got 0"),
        ("train.eval_batch_size=0", "train.eval_batch_size: must be positive, got 0"),
        ("data.missing_labels='hide'", "data.missing_labels: 'hide' is not one of error, drop, mask"),
        ("data.encoding='utf-99'", "data.encoding: 'utf-99' is not a text encoding Python knows"),
        ("train.loss_options={gamma=nan}", "train.loss_options.gamma: must be a finite number, got nan"),
        (
            "train.loss_options={class_weights=[1.0, inf]}",
            "train.loss_options.class_weights: must be a finite",
        ),
        (
            "train.loss_weight=[0.5, -0.5]",
            "train.loss_weight: the weight of 'is_adopt' must be a finite number >= 0",
        ),
        (
            "train.loss_weight=[nan, 1.0]",
            "train.loss_weight: the weight of 'risk_level' must be a finite number",
        ),
        ("train.loss_weight=[0, 0]", "train.loss_weight: every weight is 0: no task would be trained"),
        ("train.loss_weight={risk_level=1.0}", "train.loss_weight: no weight for task(s) ['is_adopt']"),
        (
            "train.loss_weight={risk_level=1.0, is_adopt=-2.0}",
            "train.loss_weight.is_adopt: must be a finite number >= 0",
        ),
        ('data.label_subset.is_adopt=["采纳"]', "data.label_subset.is_adopt: needs at least 2 labels"),
        ("model.ia3.target_modules=['query']", None),
    ],
)
def test_each_bad_value_is_one_line(override: str, expected: str | None):
    if expected is None:  # a valid value: no problem
        load_config(config(), [override])
        return
    lines = problems([override])
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines


def test_val_and_test_shares_must_leave_training_rows():
    (line,) = problems(["data.val_ratio=0.5", "data.test_ratio=0.5"])
    assert line.startswith("data.test_ratio: 0.5 + data.val_ratio 0.5 >= 1 leaves no rows to train on")
    load_config(config(), ["data.val_ratio=0.5", "data.test_ratio=0.5", 'data.test_data_path="t.csv"'])


def test_derive_rules_need_number_edges_and_two_labels():
    rule = "data.derive.band={column='s', bins=[0, nan, 1], labels=['a', 'b']}"
    assert problems([rule]) == ["data.derive.band.bins: edges must be numbers, got [0.0, nan, 1.0] (--set)"]
    one = "data.derive.band={column='s', bins=[0, 1], labels=['a']}"
    assert problems([one]) == ["data.derive.band.labels: needs at least 2 labels, got ['a'] (--set)"]
    load_config(config(), ["data.derive.band={column='s', bins=[-inf, 0.5, inf], labels=['a', 'b']}"])


def test_ia3_feedforward_modules_are_targets():
    lines = problems(["model.ia3.target_modules=['query']", "model.ia3.feedforward_modules=['dense']"])
    assert lines == ["model.ia3.feedforward_modules: ['dense'] are not in model.ia3.target_modules (--set)"]


def test_every_problem_names_the_file_that_set_it(tmp_path: Path):
    path = tmp_path / "exp.toml"
    path.write_text(
        'exp_id = "r"\n[data]\nraw_data_path = "train.csv"\nlabel_subset = ["a", "b"]\n'
        '[model]\narch = "m"\n[model.lora]\ndropout = 1.0\n[train]\nlr = nan\nmax_grad_norm = -1.0\n',
        encoding="utf-8",
    )
    lines = problems([], path)
    assert f"model.lora.dropout: must be in [0, 1), got 1.0 ({path})" in lines
    assert f"train.lr: must be a finite number > 0, got nan ({path})" in lines
    assert len(lines) == 3


def test_a_global_map_of_one_label_is_no_task(tmp_path: Path):
    (tmp_path / "map.json").write_text('{"only": 0}', encoding="utf-8")
    source = {
        "exp_id": "r",
        "data": {"raw_data_path": "train.csv", "global_label_map": "map.json"},
        "model": {"arch": "m"},
    }
    (line,) = problems([], source, cwd=tmp_path)
    assert line.startswith("data.global_label_map: has 1 label(s); a task needs at least 2")


# ---- files that are not text, not files ---------------------------------------------------------


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('exp_id = "r"\n# caf\xe9\n'.encode("latin-1"))
    assert problems([], path) == [f"{path}: not UTF-8 text (byte 0xe9 at offset 18, line 2)"]


def test_a_byte_order_mark_is_read_past(tmp_path: Path):
    path = tmp_path / "bom.toml"
    text = 'exp_id = "r"\n[data]\nraw_data_path = "t.csv"\nlabel_subset = ["a", "b"]\n[model]\narch = "m"\n'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_config(path)[0].exp_id == "r"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifos_and_folders_never_block(tmp_path: Path):
    os.mkfifo(tmp_path / "config.toml")
    assert problems([], tmp_path / "config.toml") == [
        f"{tmp_path / 'config.toml'}: not a regular file (a FIFO)"
    ]
    (tmp_path / "folder.toml").mkdir()
    assert problems([], tmp_path / "folder.toml") == [
        f"{tmp_path / 'folder.toml'}: not a regular file (a directory)"
    ]
    os.mkfifo(tmp_path / "base.toml")
    child = tmp_path / "child.toml"
    child.write_text('base_config = "base.toml"\n', encoding="utf-8")
    assert problems([], child) == [
        f"base_config: {tmp_path / 'base.toml'} is not a regular file (a FIFO) ({child})"
    ]
    os.mkfifo(tmp_path / "train.csv")
    os.mkfifo(tmp_path / "map.json")
    source = config(
        data={"raw_data_path": "train.csv", "global_label_map": "map.json", "label_subset": ["a", "b"]}
    )
    lines = problems([], source, cwd=tmp_path)
    assert f"data.raw_data_path: {tmp_path / 'train.csv'}: not a regular file (a FIFO) (<dict>)" in lines
    assert f"data.global_label_map: {tmp_path / 'map.json'}: not a regular file (a FIFO) (<dict>)" in lines


# ---- checks that need the model or its tokenizer --------------------------------------------------


@functools.cache
def _tokenizer(path: str):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path)


def test_max_len_must_leave_room_after_the_special_tokens(tiny_bert: Path):
    from lorakit.data.tokenize import check_max_len

    tokenizer = _tokenizer(str(tiny_bert))
    for bad in (1, 2):
        with pytest.raises(ConfigError) as info:
            check_max_len(tokenizer, bad)
        assert info.value.lines() == [
            f"data.max_len: {bad} leaves no room for text: the tokenizer adds 2 special token(s) to every "
            "text; use at least 3"
        ]
    check_max_len(tokenizer, 3)


def test_max_len_must_fit_the_models_positions(tiny_bert: Path, tiny_roberta: Path, builtin_plugins):
    from lorakit.modeling.build import load_backbone_encoder, position_limit

    for arch in (tiny_bert, tiny_roberta):
        cfg, _ = load_config(config(model={"arch": str(arch)}), ["data.max_len=257"])
        with pytest.raises(ConfigError) as info:
            load_backbone_encoder(cfg, builtin_plugins)
        assert info.value.lines() == [
            f"data.max_len: 257 is more than the 256 positions of {str(arch)!r}; use at most 256"
        ]
        cfg, _ = load_config(config(model={"arch": str(arch)}), ["data.max_len=256"])
        _, encoder = load_backbone_encoder(cfg, builtin_plugins)
        assert position_limit(encoder) == 256  # RoBERTa's table of 258 starts at padding_idx + 1


def test_target_modules_must_name_layers_of_the_model(tiny_bert: Path, builtin_plugins):
    from lorakit.modeling.build import load_backbone_encoder, plan_model

    counts = {"risk_level": 3, "is_adopt": 2}
    cfg, _ = load_config(
        config(model={"arch": str(tiny_bert)}), ["model.lora.target_modules=['query', 'qury', 'attention']"]
    )
    _, encoder = load_backbone_encoder(cfg, builtin_plugins)
    with pytest.raises(ConfigError) as info:
        plan_model(cfg, counts, builtin_plugins, encoder)
    assert info.value.lines() == [
        "model.lora.target_modules: 'qury' is not a module of the model (did you mean query?); its Linear "
        "layers: dense, key, query, value",
        "model.lora.target_modules: 'attention' is a block of layers (BertAttention), not a layer; name "
        "layers such as dense, key, query, value",
    ]
    cfg, _ = load_config(
        config(model={"arch": str(tiny_bert)}), ["model.lora.target_modules=['attention.self.query']"]
    )
    assert plan_model(cfg, counts, builtin_plugins, encoder).parts[0].target_modules == [
        "attention.self.query"
    ]


def test_a_task_whose_data_has_one_label_is_refused(tmp_path: Path, tiny_bert: Path):
    from lorakit.data import prepare_data

    (tmp_path / "train.csv").write_text(
        "text,label\n" + "".join(f"第{i}行,好\n" for i in range(8)), encoding="utf-8"
    )
    cfg, _ = load_config(
        {
            "exp_id": "r",
            "data": {"raw_data_path": "train.csv", "cache_dir": "c"},
            "model": {"arch": str(tiny_bert)},
        },
        cwd=tmp_path,
    )
    with pytest.raises(ConfigError, match=r"data.label_column: task 'label' has 1 label\(s\) \['好'\]"):
        prepare_data(cfg, tokenizer_loader=lambda: _tokenizer(str(tiny_bert)))


def test_a_data_path_that_became_a_fifo_is_one_line(tmp_path: Path, tiny_bert: Path, builtin_plugins):
    from lorakit.data.reading import read_table

    cfg, _ = load_config(config(), cwd=tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "late.csv")
        with pytest.raises(DataError, match=r"late.csv: not a regular file \(a FIFO\)"):
            read_table(str(tmp_path / "late.csv"), cfg, builtin_plugins)
