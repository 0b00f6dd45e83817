"""The battery, config and data part (issue 12): every bad value, file or label column gives one line and
exit 2 before the experiment folder exists, or the documented warning. Each case runs ``lorakit`` in this
process (battery_harness) against a folder holding an outputs folder with another experiment in it; after
the case that folder is exactly as it was.

Cases that fail at config validation stop before any model loads; the ones that need the model (max_len
against its positions and special tokens, target modules, loss options, label data) load the session's
tiny BERT in-process, which takes a fraction of a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from battery_harness import case, expect_error, expect_warning, lorakit, snapshot

from lorakit.testing import synthetic_frame

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="the battery makes FIFOs")

RISK = ["低风险", "中风险", "高风险"]
ADOPT = ["采纳", "不采纳"]
# Seconds a case may take: a FIFO opened by mistake blocks for ever, and then the case fails instead.
DEADLINE_S = 30


def _toml_list(values: list[str]) -> str:
    return json.dumps(values, ensure_ascii=False)


def _write_data(data: Path) -> None:
    frame = synthetic_frame(40, seed=3)
    frame.to_csv(data / "train.csv", index=False)
    holes = frame.copy()
    holes.loc[[1, 4, 7], "is_adopt"] = None
    holes.to_csv(data / "holes.csv", index=False)
    frame[frame["risk_level"] != "高风险"].to_csv(data / "no_high.csv", index=False)
    unlabelled_val = synthetic_frame(10, seed=4)
    unlabelled_val["is_adopt"] = None
    unlabelled_val.to_csv(data / "val_no_adopt.csv", index=False)
    one = frame.assign(label="低风险")
    one.to_csv(data / "one_label.csv", index=False)
    labels = {label: i for i, label in enumerate(RISK + ADOPT)}
    (data / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    (data / "one_label_map.json").write_text('{"低风险": 0}', encoding="utf-8")
    os.mkfifo(data / "fifo.csv")
    os.mkfifo(data / "fifo.json")
    (data / "folder.csv").mkdir()
    (data / "a_file").write_text("not a folder\n", encoding="utf-8")


def _base(root: Path, tiny_bert: Path) -> str:
    return "\n".join(
        [
            "# Run: lorakit train base.toml",
            'exp_id = "battery"',
            "[data]",
            'raw_data_path = "../data/train.csv"',
            'global_label_map = "../data/labels.json"',
            f'cache_dir = "{(root / "cache").as_posix()}"',
            "max_len = 32",
            "val_ratio = 0.25",
            "[data.label_subset]",
            f"risk_level = {_toml_list(RISK)}",
            f"is_adopt = {_toml_list(ADOPT)}",
            "[model]",
            f'arch = "{tiny_bert.as_posix()}"',
            "[model.lora]",
            "rank = 2",
            "alpha = 4",
            "[train]",
            "batch_size = 8",
            "epochs = 1",
            "",
        ]
    )


# Child configs: name → text after `base_config = "base.toml"`.
CHILDREN = {
    "lr_inf": "[train]\nlr = inf\n",
    "weights_table": "[train.loss_weight]\nrisk_level = 1.0\n",
    "negative_weight": "[train]\nloss_weight = [1.0, -0.5]\n",
    "dropout": "[model.lora]\ndropout = 1.0\n",
    "bins_nan": (
        '[data.derive.band]\ncolumn = "risk_score"\nbins = [0, nan, 1]\nlabels = ["低风险", "高风险"]\n'
    ),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """Data files (good, with holes, FIFOs, a folder), a base config on the tiny BERT and its variants."""
    root = tmp_path_factory.mktemp("battery-config")
    (root / "data").mkdir()
    _write_data(root / "data")
    configs = root / "configs"
    configs.mkdir()
    (configs / "base.toml").write_text(_base(root, tiny_bert), encoding="utf-8")
    for name, text in CHILDREN.items():
        (configs / f"{name}.toml").write_text(f'base_config = "base.toml"\n{text}', encoding="utf-8")
    single = (
        _base(root, tiny_bert)
        .split("[data.label_subset]")[0]
        .replace('global_label_map = "../data/labels.json"\n', "")
    )
    single += "\n".join(["[model]", f'arch = "{tiny_bert.as_posix()}"', ""])
    (configs / "single.toml").write_text(single, encoding="utf-8")
    (configs / "latin1.toml").write_bytes(b'base_config = "base.toml"\n# caf\xe9\n')
    os.mkfifo(configs / "fifo.toml")
    os.mkfifo(configs / "fifo_base.toml")
    (configs / "child_of_fifo.toml").write_text('base_config = "fifo_base.toml"\n', encoding="utf-8")
    (configs / "folder.toml").mkdir()
    return root


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"the case ran past {seconds} s (a FIFO opened?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _without_run_lock(snap: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The snapshot, blind to the run lock: it is taken before the model loads, in outputs/.locks beside
    the experiment folders, so the outputs folder's own mtime may move while nothing in it changes."""
    return {
        key: (value[0], 0) if key == "outputs" else value
        for key, value in snap.items()
        if not key.startswith("outputs/.locks")
    }


def run(project: Path, tmp_path: Path, config: str, overrides: list[str], command: str = "train"):
    """``lorakit <command> CONFIG --set ...`` against a work folder whose outputs hold another experiment;
    returns the outcome and the work folder's snapshots before and after."""
    work = tmp_path / "work"
    other = work / "outputs" / "other"
    other.mkdir(parents=True)
    (other / "run.json").write_text('{"exp_id": "other", "status": "completed"}\n', encoding="utf-8")
    before = snapshot(work)
    args = [*command.split(), str(project / "configs" / f"{config}.toml")]
    args += [f"--set={o.replace('{root}', project.as_posix())}" for o in overrides]
    if command == "train":
        args += ["--outputs", str(work / "outputs")]
    with _deadline(DEADLINE_S):
        result = lorakit(*args, cwd=work, env={"LORAKIT_OUTPUTS": str(work / "outputs")})
    return result, before, snapshot(work)


# ---- values: one line naming key and file, exit 2, before any model loads ----------------------------

VALUES = [
    case([], "train.lr=nan", "train.lr: must be a finite number > 0, got nan (--set)", id="lr-nan"),
    case([], "train.lr=-inf", "train.lr: must be a finite number > 0, got -inf (--set)", id="lr-minus-inf"),
    case([], "train.lr=-1e-4", "train.lr: must be a finite number > 0, got -0.0001", id="lr-negative"),
    case([], "train.lr=0", "train.lr: must be a finite number > 0, got 0.0", id="lr-zero"),
    case(
        [],
        "train.max_grad_norm=-1.0",
        "train.max_grad_norm: must be a finite number >= 0",
        id="clip-negative",
    ),
    case([], "train.max_grad_norm=nan", "train.max_grad_norm: must be a finite number >= 0", id="clip-nan"),
    case([], "train.max_grad_norm=inf", "got inf", id="clip-inf"),
    case(
        [],
        "train.weight_decay=-0.01",
        "train.weight_decay: must be a finite number >= 0",
        id="decay-negative",
    ),
    case([], "train.weight_decay=inf", "train.weight_decay: must be a finite number >= 0", id="decay-inf"),
    case([], "train.warmup_ratio=1.0", "train.warmup_ratio: must be in [0, 1), got 1.0", id="warmup-one"),
    case([], "train.warmup_ratio=nan", "train.warmup_ratio: must be in [0, 1), got nan", id="warmup-nan"),
    case(
        [],
        "train.loss_weight=[0.5, -0.5]",
        "the weight of 'is_adopt' must be a finite number >= 0",
        id="lw-neg",
    ),
    case([], "train.loss_weight=[nan, 1.0]", "the weight of 'risk_level' must be a finite", id="lw-nan"),
    case([], "train.loss_weight=[0.0, 0.0]", "train.loss_weight: every weight is 0", id="lw-zeros"),
    case([], "train.loss_weight=[1.0]", "train.loss_weight: has 1 weights for 2 task(s)", id="lw-short"),
    case(
        [], "train.loss_weight={risk_level=1.0}", "no weight for task(s) ['is_adopt']", id="lw-table-missing"
    ),
    case(
        [],
        "train.loss_weight={risk_level=1.0, is_adopt=-1.0}",
        "train.loss_weight.is_adopt: must be",
        id="lw-t-neg",
    ),
    case(
        [],
        "train.loss_weight={risk_level=1.0, is_adopt=1.0, chanel=1.0}",
        "train.loss_weight.chanel: not a task",
        id="lw-table-unknown",
    ),
    case([], 'train.loss_weight="equal"', 'expected a list, a table or "uncertainty"', id="lw-word"),
    case(
        [],
        'data.label_subset.is_adopt=["采纳"]',
        "data.label_subset.is_adopt: needs at least 2",
        id="one-label",
    ),
    case(
        [],
        'data.label_subset.is_adopt=["采纳", "采纳"]',
        "data.label_subset.is_adopt: repeats",
        id="label-twice",
    ),
    case(
        [], "model.lora.dropout=1.0", "model.lora.dropout: must be in [0, 1), got 1.0", id="lora-dropout-one"
    ),
    case(
        [],
        "model.lora.dropout=-0.1",
        "model.lora.dropout: must be in [0, 1), got -0.1",
        id="lora-dropout-neg",
    ),
    case([], "model.dora.dropout=2", "model.dora.dropout: must be in [0, 1), got 2.0", id="dora-dropout"),
    case([], "model.head_dropout=1.5", "model.head_dropout: must be in [0, 1), got 1.5", id="head-dropout"),
    case(
        [],
        "model.heads.risk_level.dropout=nan",
        "model.heads.risk_level.dropout: must be in [0, 1)",
        id="hd-nan",
    ),
    case([], "model.heads.chanel.dropout=0.1", "model.heads.chanel: not a task", id="head-not-a-task"),
    case([], "model.lora.alpha=0", "model.lora.alpha: must be positive, got 0", id="alpha-zero"),
    case([], "model.lora.alpha=-8", "model.lora.alpha: must be positive, got -8", id="alpha-negative"),
    case([], "model.lora.rank=0", "model.lora.rank: must be positive, got 0", id="rank-zero"),
    case(
        [], "model.lora.bias='some'", "model.lora.bias: 'some' is not one of none, all, lora_only", id="bias"
    ),
    case([], "model.head_hidden_size=0", "model.head_hidden_size: must be positive, got 0", id="hidden-zero"),
    case(
        [],
        "model.heads.is_adopt.hidden_size=-1",
        "model.heads.is_adopt.hidden_size: must be",
        id="hidden-neg",
    ),
    case([], "model.pooling='max'", "model.pooling: 'max' is not one of cls, mean", id="pooling"),
    case(
        [],
        "train.loss_options={label_smoothing=nan}",
        "train.loss_options.label_smoothing: must be a finite",
        id="ls-nan",
    ),
    case(
        [],
        "train.loss_options={gamma=inf}",
        "train.loss_options.gamma: must be a finite number, got inf",
        id="g-inf",
    ),
    case([], "seed=-1", "seed: must be >= 0, got -1", id="seed-negative"),
    case([], "data.sample_seed=-1", "data.sample_seed: must be >= 0, got -1", id="sample-seed-negative"),
    case([], "data.max_rows=0", "data.max_rows: must be positive, got 0", id="max-rows-zero"),
    case([], "data.max_len=0", "data.max_len: must be positive, got 0", id="max-len-zero"),
    case([], "train.batch_size=0", "train.batch_size: must be positive, got 0", id="batch-zero"),
    case(
        [], "train.eval_batch_size=-4", "train.eval_batch_size: must be positive, got -4", id="eval-batch-neg"
    ),
    case([], "train.epochs=0", "train.epochs: must be positive, got 0", id="epochs-zero"),
    case([], "train.grad_accum=0", "train.grad_accum: must be positive, got 0", id="accum-zero"),
    case(
        [], "train.checkpoint_every_steps=0", "train.checkpoint_every_steps: must be positive", id="ckpt-zero"
    ),
    case(
        [],
        "train.early_stopping_patience=0",
        "train.early_stopping_patience: must be positive",
        id="patience",
    ),
    case([], "resources.memory_mb=0", "resources.memory_mb: must be positive, got 0", id="memory-zero"),
    case([], "resources.gpus=0", "resources.gpus: must be positive, got 0", id="gpus-zero"),
    case([], "resources.priority='urgent'", "resources.priority: 'urgent' is not one of low", id="priority"),
    case([], "train.mixed_precision='fp8'", "train.mixed_precision: 'fp8' is not one of", id="precision"),
    case([], "train.device='tpu'", "train.device: 'tpu' is not one of auto, cpu, cuda", id="device"),
    case([], "data.val_ratio=1.0", "data.val_ratio: must be in [0, 1), got 1.0", id="val-ratio-one"),
    case([], "data.test_ratio=nan", "data.test_ratio: must be in [0, 1), got nan", id="test-ratio-nan"),
    case(
        ["data.val_ratio=0.6"],
        "data.test_ratio=0.4",
        "data.test_ratio: 0.4 + data.val_ratio 0.6 >= 1 leaves no rows to train on",
        id="ratios-sum",
    ),
    case(
        [],
        "data.missing_labels='hide'",
        "data.missing_labels: 'hide' is not one of error, drop, mask",
        id="ml",
    ),
    case(
        [], "data.encoding='utf-99'", "data.encoding: 'utf-99' is not a text encoding Python knows", id="enc"
    ),
    case(
        [], "data.encoding_errors='skip'", "data.encoding_errors: 'skip' is not one of strict", id="enc-err"
    ),
    case(
        ["model.ia3.target_modules=['query']"],
        "model.ia3.feedforward_modules=['dense']",
        "model.ia3.feedforward_modules: ['dense'] are not in model.ia3.target_modules",
        id="ia3-feedforward",
    ),
    case(
        [],
        "data.derive.band={column='risk_score', bins=[0, 1], labels=['低风险']}",
        "data.derive.band.labels: needs at least 2 labels",
        id="derive-one-label",
    ),
    case(
        [],
        "task_type='single_cls'",
        "task_type: 'single_cls' disagrees with data.label_subset",
        id="task-type",
    ),
]


@pytest.mark.parametrize(("extra", "override", "expected"), VALUES)
def test_a_bad_value_is_one_line_before_the_folder(
    project: Path, tmp_path: Path, extra: list[str], override: str, expected: str
):
    result, before, after = run(project, tmp_path, "base", [*extra, override])
    expect_error(result, 2, expected)
    assert len(result.err_lines) == 1, result.err_lines
    assert after == before


# ---- files: values set in a file name it; files that are no text, no file, or block --------------------

FILES = [
    case(
        "lr_inf",
        [],
        "train.lr: must be a finite number > 0, got inf ({root}/configs/lr_inf.toml)",
        id="lr-inf-file",
    ),
    case(
        "weights_table",
        [],
        "train.loss_weight: no weight for task(s) ['is_adopt']; give every task a weight ({root}/configs/weights_table.toml)",
        id="lw-table-file",
    ),
    case(
        "negative_weight",
        [],
        "the weight of 'is_adopt' must be a finite number >= 0, got -0.5",
        id="lw-neg-file",
    ),
    case(
        "dropout",
        [],
        "model.lora.dropout: must be in [0, 1), got 1.0 ({root}/configs/dropout.toml)",
        id="dropout-file",
    ),
    case(
        "bins_nan",
        [],
        "data.derive.band.bins: edges must be numbers, got [0.0, nan, 1.0]",
        id="bins-nan-file",
    ),
    case(
        "latin1",
        [],
        "{root}/configs/latin1.toml: not UTF-8 text (byte 0xe9 at offset 31, line 2)",
        id="not-utf8",
    ),
    case("fifo", [], "{root}/configs/fifo.toml: not a regular file (a FIFO)", id="config-fifo"),
    case(
        "child_of_fifo",
        [],
        "base_config: {root}/configs/fifo_base.toml is not a regular file (a FIFO) ({root}/configs/child_of_fifo.toml)",
        id="base-config-fifo",
    ),
    case("folder", [], "'{root}/configs/folder.toml' is a directory", id="config-folder"),
    case(
        "base",
        ['data.raw_data_path="{root}/data/fifo.csv"'],
        "data.raw_data_path: {root}/data/fifo.csv: not a regular file (a FIFO) (--set)",
        id="data-fifo",
    ),
    case(
        "base",
        ['data.raw_data_path="{root}/data/folder.csv"'],
        "data.raw_data_path: {root}/data/folder.csv: not a regular file (a directory)",
        id="data-folder",
    ),
    case(
        "base",
        ['data.val_data_path="{root}/data/fifo.csv"'],
        "data.val_data_path: {root}/data/fifo.csv: not a regular file (a FIFO)",
        id="val-fifo",
    ),
    case(
        "base",
        ['data.test_data_path="{root}/data/folder.csv"'],
        "data.test_data_path: {root}/data/folder.csv: not a regular file (a directory)",
        id="test-folder",
    ),
    case(
        "base",
        ['data.global_label_map="{root}/data/fifo.json"'],
        "data.global_label_map: {root}/data/fifo.json: not a regular file (a FIFO)",
        id="label-map-fifo",
    ),
    case(
        "base",
        ['data.cache_dir="{root}/data/a_file"'],
        "data.cache_dir: {root}/data/a_file: not a directory",
        id="cache-dir-file",
    ),
    case(
        "single",
        ['data.global_label_map="{root}/data/one_label_map.json"'],
        "data.global_label_map: has 1 label(s); a task needs at least 2",
        id="one-label-map",
    ),
]


@pytest.mark.parametrize(("config", "overrides", "expected"), FILES)
def test_a_bad_file_is_one_line_before_the_folder(
    project: Path, tmp_path: Path, config: str, overrides: list[str], expected: str
):
    result, before, after = run(project, tmp_path, config, overrides)
    expect_error(result, 2, expected.format(root=project.as_posix()))
    assert len(result.err_lines) == 1, result.err_lines
    assert after == before


def test_config_show_refuses_a_fifo_too(project: Path, tmp_path: Path):
    result, before, after = run(project, tmp_path, "fifo", [], command="config show")
    expect_error(result, 2, f"{project.as_posix()}/configs/fifo.toml: not a regular file (a FIFO)")
    assert after == before


# ---- the model and the data: still one line, still before the folder ---------------------------------

MODEL = [
    case(
        ["data.max_len=300"],
        "data.max_len: 300 is more than the 256 positions of",
        id="max-len-over-positions",
    ),
    case(["data.max_len=257"], "; use at most 256", id="max-len-one-over"),
    case(
        ["data.max_len=2"],
        "data.max_len: 2 leaves no room for text: the tokenizer adds 2 special token(s) to every text; use at least 3",
        id="max-len-special-2",
    ),
    case(["data.max_len=1"], "data.max_len: 1 leaves no room for text", id="max-len-special-1"),
    case(
        ["model.lora.target_modules=['qury']"],
        "model.lora.target_modules: 'qury' is not a module of the model (did you mean query?); its Linear layers: "
        "dense, key, query, value",
        id="target-typo",
    ),
    case(
        ["model.lora.target_modules=['attention']"],
        "model.lora.target_modules: 'attention' is a block of layers (BertAttention), not a layer",
        id="target-block",
    ),
    case(
        ["model.method='ia3'", "model.ia3.target_modules=['query', 'nope']"],
        "model.ia3.target_modules: 'nope' is not a module of the model",
        id="ia3-target",
    ),
    case(
        ["model.method='dora'", "model.dora.target_modules=['valu']"],
        "model.dora.target_modules: 'valu' is not a module of the model (did you mean value?)",
        id="dora-target",
    ),
    case(
        ["train.loss_options={class_weights=[1.0, 0.0, 1.0]}"],
        "train.loss_options.class_weights: every weight must be a finite number > 0",
        id="class-weight-zero",
    ),
    case(
        ["train.loss_options={class_weights=[1.0, 1.0]}"],
        "train.loss_options.class_weights: has 2 values but the task has 3 labels",
        id="class-weights-length",
    ),
    case(
        ["train.loss_options={label_smoothing=1.0}"],
        "train.loss_options.label_smoothing: must be a number in [0, 1), got 1.0",
        id="smoothing-one",
    ),
    case(
        ["train.loss='focal'", "train.loss_options={gamma=-1.0}"],
        "train.loss_options.gamma: must be a number >= 0",
        id="gamma-negative",
    ),
    case(
        ['data.raw_data_path="{root}/data/holes.csv"'],
        "column 'is_adopt': 3 row(s) have a label outside",
        id="empty-labels-error",
    ),
    case(
        ['data.raw_data_path="{root}/data/holes.csv"'],
        'for the empty cells, data.missing_labels = "drop" or "mask" also works',
        id="empty-labels-names-the-option",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), MODEL)
def test_a_problem_the_model_or_data_shows_is_one_line_before_the_folder(
    project: Path, tmp_path: Path, overrides: list[str], expected: str
):
    result, before, after = run(project, tmp_path, "base", overrides)
    expect_error(result, 2, expected)
    assert len(result.err_lines) == 1, result.err_lines
    assert _without_run_lock(after) == _without_run_lock(before)
    assert not (tmp_path / "work" / "outputs" / "battery").exists()


def test_a_task_whose_data_has_one_label_is_one_line(project: Path, tmp_path: Path):
    result, before, after = run(
        project, tmp_path, "single", ['data.raw_data_path="{root}/data/one_label.csv"']
    )
    expect_error(
        result, 2, "data.label_column: task 'label' has 1 label(s) ['低风险']; a classifier needs at least 2"
    )
    assert _without_run_lock(after) == _without_run_lock(before)


# ---- warnings: the command goes on -------------------------------------------------------------------

WARNINGS = [
    case(
        ['data.raw_data_path="{root}/data/no_high.csv"'],
        "task 'risk_level': label(s) ['高风险'] have no rows in the training split",
        id="subset-label-without-rows",
    ),
    case(
        ['data.val_data_path="{root}/data/val_no_adopt.csv"', "data.missing_labels='mask'"],
        "task 'is_adopt': no validation row has a label",
        id="task-without-labelled-val-rows",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), WARNINGS)
def test_label_warnings_let_the_command_go_on(
    project: Path, tmp_path: Path, overrides: list[str], expected: str
):
    result, before, after = run(project, tmp_path, "base", overrides, command="cache build")
    expect_warning(result, expected)
    assert after == before


@pytest.mark.parametrize("mode", ["drop", "mask"])
def test_empty_label_cells_are_dropped_or_masked_as_asked(project: Path, tmp_path: Path, mode: str):
    overrides = ['data.raw_data_path="{root}/data/holes.csv"', f"data.missing_labels='{mode}'"]
    result, before, after = run(project, tmp_path, "base", overrides, command="cache build")
    assert result.code == 0 and "Traceback" not in result.err, result
    rows = sum(int(part.split()[1]) for part in result.out.split("  ")[1].split(", "))
    assert rows == (37 if mode == "drop" else 40)
    assert after == before
