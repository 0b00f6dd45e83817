"""The typed experiment config: attrs classes, structured with cattrs, every problem reported at once.

Each error reads ``dotted.key: problem (file that set it)``. The classes live here; structuring and error
formatting in :mod:`.converter`, range and semantic checks in :mod:`.rules`, plugin-owned option tables
(a tuning method's ``[model.<method>]``, head and loss options) in :mod:`.options`.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import attrs

from ..conventions import task_type_for
from ..errors import ConfigError
from ..training.precision import REQUESTS as PRECISION_REQUESTS
from .loader import DEFAULT_SOURCE, RawConfig, load_raw

if TYPE_CHECKING:
    from ..plugins import Plugins

PRIORITIES = ("low", "medium", "high")
ENCODING_ERRORS = ("strict", "replace", "ignore")
POOLINGS = ("cls", "mean")
MIXED_PRECISION = PRECISION_REQUESTS
DEVICES = ("auto", "cpu", "cuda")
# What a row with an empty cell in one task's label column does (see docs/data.md).
MISSING_LABELS = ("error", "drop", "mask")

LabelSubset = Union[list[str], dict[str, list[str]], None]
LossWeight = Union[list[float], dict[str, float], str, None]
#: ``model.method``: one tuning method, or several combined in one model (a one-name list reads as the name)
MethodNames = Union[str, list[str]]


def _doc(text: str, **kwargs: Any) -> Any:
    """An attrs field whose help text lands in the config reference."""
    return attrs.field(metadata={"doc": text}, **kwargs)


@attrs.define(kw_only=True, frozen=True)
class DeriveRule:
    column: str = _doc("numeric source column")
    bins: list[float] = _doc(
        "bin edges (pandas.cut): n+1 edges for n labels; values outside are unknown labels"
    )
    labels: list[str] = _doc("one label per bin, in edge order")
    right: bool = _doc("bins include their right edge, (a, b]; false makes them [a, b)", default=True)


@attrs.define(kw_only=True, frozen=True)
class DataConfig:
    raw_data_path: str = _doc(
        "training data file (csv, tsv, jsonl, json, parquet); relative to the config file"
    )
    val_data_path: str | None = _doc(
        "validation file; when unset, val_ratio of the training data", default=None
    )
    test_data_path: str | None = _doc("optional test file, evaluated once at the end", default=None)
    text_column: str = _doc("column holding the text", default="text")
    label_column: str = _doc("the label column of a single-label experiment", default="label")
    label_subset: LabelSubset = _doc(
        "single label: list of labels (absent = all of the global map); several: {column = [labels]}",
        default=None,
    )
    global_label_map: str | None = _doc(
        "global_label_map.json ({label: global id}), the one truth for label names", default=None
    )
    max_len: int = _doc("tokens per text after truncation", default=128)
    data_process_version: str = _doc("bump to invalidate caches after a preprocessing change", default="v1")
    val_ratio: float = _doc(
        "share of rows held out for validation (stratified on the first task)", default=0.1
    )
    test_ratio: float = _doc("share of rows held out as a test split", default=0.0)
    encoding: str = _doc("text file encoding", default="utf-8")
    encoding_errors: str = _doc("strict | replace | ignore", default="strict")
    drop_unknown_labels: bool = _doc(
        "drop rows whose label is outside the subset (else an error)", default=False
    )
    drop_empty_text: bool = _doc("drop rows with empty text (else an error)", default=False)
    missing_labels: str = _doc(
        "a row with an empty label cell: error | drop (the row) | mask (train the row's other tasks; "
        "a row with no label at all is dropped)",
        default="error",
    )
    max_rows: int | None = _doc("reproducible sample of at most this many rows", default=None)
    sample_seed: int = _doc("seed of the max_rows sample", default=0)
    cache_dir: str | None = _doc(
        "tokenized cache folder (default: data/processed, or $LORAKIT_CACHE)", default=None
    )
    derive: dict[str, DeriveRule] = _doc(
        "[data.derive.<name>] turns a numeric column into a label column", factory=dict
    )


@attrs.define(kw_only=True, frozen=True)
class HeadConfig:
    type: str | None = _doc("head plugin for this task (default: model.head)", default=None)
    loss: str | None = _doc("loss plugin for this task (default: the head's, else train.loss)", default=None)
    hidden_size: int | None = _doc(
        "hidden width of this task's head, for heads that have one (default: model.head_hidden_size)",
        default=None,
    )
    dropout: float | None = _doc("dropout before the head", default=None)
    options: dict[str, Any] = _doc(
        "[model.heads.<task>.options] this task's head plugin's own options, over model.head_options",
        factory=dict,
    )


@attrs.define(kw_only=True, frozen=True, slots=False)  # no slots: the tuning tables sit in __dict__
class ModelConfig:
    arch: str = _doc("hub id, local directory, or pkg://package/sub/dir")
    backbone: str | None = _doc(
        "force a backbone plugin (default: resolved from the model type)", default=None
    )
    method: MethodNames = _doc(
        "tuning method plugin: lora | dora | ia3 | ..., or a list of them combined in one model "
        '(["lora", "bottleneck"]: at most one from peft); each one\'s options are its [model.<method>] table',
        default="lora",
    )
    head: str = _doc("head plugin for every task", default="linear")
    head_hidden_size: int | None = _doc(
        "hidden width of heads that have one (default: the encoder's)", default=None
    )
    head_options: dict[str, Any] = _doc(
        "[model.head_options] the head plugin's own options, for every task", factory=dict
    )
    head_dropout: float = _doc("dropout before each head", default=0.1)
    heads: dict[str, HeadConfig] = _doc("[model.heads.<task>] per-task head overrides", factory=dict)
    pooling: str | None = _doc("cls | mean (default: the backbone's)", default=None)

    # Each tuning method's options, structured by its plugin's class (``[model.<method>]`` in the file),
    # are kept beside the fields, not as one: the plugins, not this class, decide which tables exist.

    def with_tuning(self, tables: Mapping[str, Any]) -> "ModelConfig":
        """This table with each tuning method's structured options (``attrs.evolve`` drops them)."""
        copy = attrs.evolve(self)
        object.__setattr__(copy, "_tuning", dict(tables))
        return copy

    @property
    def tuning(self) -> dict[str, Any]:
        """``{method: options}`` for every tuning method with a table (its defaults where none is set)."""
        tables: dict[str, Any] = self.__dict__.get("_tuning", {})
        return tables

    def __getattr__(self, name: str) -> Any:
        """``cfg.model.<method>``: that tuning method's options (``cfg.model.lora.rank``)."""
        tables = self.__dict__.get("_tuning", {}) if not name.startswith("__") else {}
        if name in tables:
            return tables[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def methods(self) -> list[str]:
        """``model.method`` as a list: the tuning methods of the model, in the config's order."""
        return [self.method] if isinstance(self.method, str) else list(self.method)

    @property
    def method_name(self) -> str:
        """One name for the combination (``lora+bottleneck``), as run.json, ``ls`` and ``compare`` show it."""
        return "+".join(self.methods)

    @property
    def method_options(self) -> Any:
        """The options of the (first) tuning method (None where its plugin has no options class and no table)."""
        return self.tuning.get(self.methods[0])


@attrs.define(kw_only=True, frozen=True)
class TrainConfig:
    batch_size: int = _doc("examples per optimizer micro-batch", default=32)
    eval_batch_size: int | None = _doc(
        "examples per evaluation batch (default: 2 x batch_size)", default=None
    )
    lr: float = _doc("peak learning rate", default=2e-4)
    epochs: int = _doc("training epochs", default=3)
    loss_weight: LossWeight = _doc(
        'per-task loss weights: list in task order, {task = w}, or "uncertainty" (learned)', default=None
    )
    save_strategy: str = _doc(
        'which epoch is kept: "best_avg_f1", "best_<metric>" or "last"', default="best_avg_f1"
    )
    warmup_ratio: float = _doc("share of steps spent warming up the LR", default=0.0)
    weight_decay: float = _doc("AdamW weight decay", default=0.01)
    grad_accum: int = _doc("micro-batches per optimizer step", default=1)
    max_grad_norm: float | None = _doc("gradient clipping norm (none: off)", default=1.0)
    early_stopping_patience: int | None = _doc("stop after this many epochs without a new best", default=None)
    lr_scheduler: str = _doc("LR schedule plugin: linear | cosine | constant", default="linear")
    loss: str = _doc("loss plugin for every task: cross_entropy | focal | ...", default="cross_entropy")
    loss_options: dict[str, Any] = _doc(
        "options passed to each task's loss (class_weights, label_smoothing, gamma, ...); a table named "
        "after a task, [train.loss_options.<task>], sets that task's own over them",
        factory=dict,
    )
    metrics: list[str] = _doc(
        "metric plugins computed per task each epoch", factory=lambda: ["accuracy", "macro_f1"]
    )
    mixed_precision: str = _doc(
        "no | fp16 | bf16 | auto (bf16 where the hardware runs it natively, else fp32; a resumed run keeps "
        "the precision it started with)",
        default="auto",
    )
    checkpoint_every_steps: int | None = _doc("also checkpoint every N optimizer steps", default=None)
    group_by_length: bool = _doc("batch texts of similar length together (shuffled groups)", default=True)
    device: str = _doc("auto | cpu | cuda", default="auto")
    tensorboard: bool = _doc(
        "also write TensorBoard event files (per-epoch metrics, the test split's) to <folder>/tensorboard/",
        default=False,
    )


@attrs.define(kw_only=True, frozen=True)
class ResourcesConfig:
    priority: str = _doc("scheduler priority: low | medium | high", default="medium")
    gpus: int = _doc("GPUs for one run (data parallel when > 1)", default=1)
    memory_mb: int | None = _doc("override the estimated GPU memory need", default=None)


@attrs.define(kw_only=True, frozen=True)
class ExperimentConfig:
    exp_id: str = _doc(
        "experiment id; names the output folder: letters, digits and _ - . + = @ (no path), at most 128"
    )
    description: str = _doc("free text", default="")
    sweep: str | None = _doc(
        "the sweep this experiment is a point of, as `lorakit sweep` writes it (`compare --filter sweep=ID`); "
        "a [sweep] table instead holds the grid `lorakit sweep` expands (grid, random, seed), which training "
        "ignores",
        default=None,
    )
    base_config: str | None = _doc("parent config, relative to this file; chains of any depth", default=None)
    task_type: str | None = _doc(
        "single_cls | double_cls | multi_cls; derived from label columns", default=None
    )
    seed: int = _doc("seed for model init, shuffling and dropout", default=42)
    data: DataConfig = _doc("[data]")
    model: ModelConfig = _doc("[model]")
    train: TrainConfig = _doc("[train]", factory=TrainConfig)
    resources: ResourcesConfig = _doc("[resources]", factory=ResourcesConfig)

    @property
    def task_columns(self) -> list[str]:
        """Label columns in task order (one for single-label)."""
        if isinstance(self.data.label_subset, dict):
            return list(self.data.label_subset)
        return [self.data.label_column]

    @property
    def derived_task_type(self) -> str:
        return task_type_for(len(self.task_columns))

    def task_labels(self, task: str) -> list[str] | None:
        subset = self.data.label_subset
        if isinstance(subset, dict):
            return list(subset[task])
        return list(subset) if subset is not None else None


# ---- validation: structuring in .converter, checks in .rules, plugin tables in .options -----------


def structure(raw: RawConfig, plugins: "Plugins | None" = None) -> ExperimentConfig:
    """Validate a merged raw config into an :class:`ExperimentConfig`; every problem is reported at once.

    ``plugins`` own the option tables of tuning methods, heads and losses (default: the process's)."""
    from .converter import where
    from .rules import global_label_problems, semantic_problems

    if plugins is None:
        from ..plugins import get_plugins

        plugins = get_plugins()
    core, tables, found = _structure_parts(raw.data, plugins)
    config: ExperimentConfig | None = None
    if core is not None:
        config = attrs.evolve(core, model=core.model.with_tuning(tables))
        found.extend(semantic_problems(config, plugins))
        found.extend(global_label_problems(config))
    if found:
        raise ConfigError(f"{key}: {problem} ({where(raw, key)})" for key, problem in found)
    assert config is not None
    return config


def _structure_parts(
    data: Mapping[str, Any], plugins: "Plugins"
) -> tuple["ExperimentConfig | None", dict[str, Any], list[tuple[str, str]]]:
    """The core tables and the tuning methods' tables, structured apart; unknown keys reported first."""
    from .converter import cattrs_problems, converter, strip_unknown, unknown_keys
    from .options import structure_tuning_tables

    model = data.get("model")
    reserved = {f.name for f in attrs.fields(ModelConfig)}
    registry = plugins.tuning_methods()
    names = set(registry) - reserved
    found: list[tuple[str, str]] = []
    # a method the config names but no plugin registers: its table is no unknown key, the method is the news
    missing = [n for n in _named_methods(model) if n not in registry and n not in reserved]
    found += [("model.method", registry.unknown_message(n)) for n in missing]
    core_data = dict(data)
    if isinstance(core_data.get("sweep"), Mapping):  # [sweep]: the grid of `lorakit sweep`, checked there
        del core_data["sweep"]
    if isinstance(model, Mapping):
        core_data["model"] = {k: v for k, v in model.items() if k not in names and k not in missing}
    unknown_keys(core_data, ExperimentConfig, "", found)
    tables, table_problems = structure_tuning_tables(
        model if isinstance(model, Mapping) else {}, reserved, plugins
    )
    found += [p for p in table_problems if "unknown key" in p[1]]
    config: ExperimentConfig | None = None
    try:
        config = converter().structure(strip_unknown(core_data, ExperimentConfig), ExperimentConfig)
    except Exception as exc:  # cattrs raises exception groups of the individual problems
        found.extend(cattrs_problems(exc))
    found += [p for p in table_problems if "unknown key" not in p[1]]
    return config, tables, found


def _named_methods(model: Any) -> list[str]:
    """The method names a raw ``[model]`` table gives (as written; the converter checks the shape)."""
    method = model.get("method") if isinstance(model, Mapping) else None
    if isinstance(method, str):
        return [method]
    if isinstance(method, list):
        return [m for m in method if isinstance(m, str)]
    return []


def load_config(
    source: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    cwd: Path | None = None,
    plugins: "Plugins | None" = None,
) -> tuple["ExperimentConfig", RawConfig]:
    """Load, merge, override and validate a config. Raises :class:`ConfigError` listing every problem."""
    raw = load_raw(source, overrides, cwd=cwd)
    return structure(raw, plugins), raw


def defaults_provenance(raw: RawConfig, cfg: ExperimentConfig) -> dict[str, str]:
    """Provenance for every key of the validated config, ``default`` where no file set it."""
    full = flatten_config(cfg)
    return {key: raw.provenance.get(key, DEFAULT_SOURCE) for key in full}


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The validated config as plain data (what config_copy.toml and the index record)."""
    from .converter import unstructure

    result: dict[str, Any] = unstructure(cfg)
    return result


def flatten_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The validated config as ``{dotted.key: value}``."""
    from .converter import flatten

    return flatten(to_dict(cfg))
