"""The typed experiment config: attrs classes, structured with cattrs, every problem reported at once.

Each error reads ``dotted.key: problem (file that set it)``.
"""

import codecs
import math
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import attrs
import cattrs

from ..errors import ConfigError, did_you_mean
from ..runs.layout import exp_id_problem
from ..training.precision import REQUESTS as PRECISION_REQUESTS
from .loader import DEFAULT_SOURCE, RawConfig, file_kind_problem, load_raw

PRIORITIES = ("low", "medium", "high")
TASK_TYPES = ("single_cls", "double_cls", "multi_cls")
ENCODING_ERRORS = ("strict", "replace", "ignore")
POOLINGS = ("cls", "mean")
MIXED_PRECISION = PRECISION_REQUESTS
DEVICES = ("auto", "cpu", "cuda")
LORA_BIASES = ("none", "all", "lora_only")
# What a row with an empty cell in one task's label column does (see docs/data.md).
MISSING_LABELS = ("error", "drop", "mask")

LabelSubset = Union[list[str], dict[str, list[str]], None]
LossWeight = Union[list[float], dict[str, float], str, None]


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
class LoraConfig:
    rank: int = _doc("LoRA rank r", default=8)
    alpha: int = _doc("LoRA alpha (scaling = alpha / rank)", default=16)
    dropout: float = _doc("dropout on the LoRA path", default=0.1)
    target_modules: list[str] | None = _doc("module names to adapt; default: the backbone's", default=None)
    bias: str = _doc("none | all | lora_only", default="none")


@attrs.define(kw_only=True, frozen=True)
class IA3Config:
    target_modules: list[str] | None = _doc("module names to adapt; default: the backbone's", default=None)
    feedforward_modules: list[str] | None = _doc(
        "subset of target_modules that are feed-forward", default=None
    )


@attrs.define(kw_only=True, frozen=True)
class HeadConfig:
    type: str | None = _doc("head plugin for this task (default: model.head)", default=None)
    loss: str | None = _doc("loss plugin for this task (default: the head's, else train.loss)", default=None)
    hidden_size: int | None = _doc("hidden width of an mlp head", default=None)
    dropout: float | None = _doc("dropout before the head", default=None)


@attrs.define(kw_only=True, frozen=True)
class ModelConfig:
    arch: str = _doc("hub id, local directory, or pkg://package/sub/dir")
    backbone: str | None = _doc(
        "force a backbone plugin (default: resolved from the model type)", default=None
    )
    method: str = _doc("tuning method plugin: lora | dora | ia3", default="lora")
    lora: LoraConfig = _doc("[model.lora]", factory=LoraConfig)
    dora: LoraConfig = _doc("[model.dora], same keys as [model.lora]", factory=LoraConfig)
    ia3: IA3Config = _doc("[model.ia3]", factory=IA3Config)
    head: str = _doc("head plugin for every task", default="linear")
    head_hidden_size: int | None = _doc("hidden width of mlp heads (default: the encoder's)", default=None)
    head_dropout: float = _doc("dropout before each head", default=0.1)
    heads: dict[str, HeadConfig] = _doc("[model.heads.<task>] per-task head overrides", factory=dict)
    pooling: str | None = _doc("cls | mean (default: the backbone's)", default=None)


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
        "options passed to the loss (class_weights, label_smoothing, gamma)", factory=dict
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
        n = len(self.task_columns)
        return TASK_TYPES[min(n, 3) - 1]

    def task_labels(self, task: str) -> list[str] | None:
        subset = self.data.label_subset
        if isinstance(subset, dict):
            return list(subset[task])
        return list(subset) if subset is not None else None


# ---- structuring --------------------------------------------------------------------------------


def _strict(expected: type | tuple[type, ...], name: str) -> Any:
    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and bool not in (expected if isinstance(expected, tuple) else (expected,)):
            raise TypeError(f"expected {name}, got {value!r}")
        if not isinstance(value, expected):
            raise TypeError(f"expected {name}, got {type(value).__name__} {value!r}")
        return float(value) if name == "a number" else value  # type: ignore[arg-type]

    return hook


def _label_subset(value: Any, _type: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, Mapping) and all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value.values()
    ):
        return {str(k): list(v) for k, v in value.items()}
    raise TypeError("expected a list of labels or a table {column = [labels]}")


def _loss_weight(value: Any, _type: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return [float(v) for v in value]
    if isinstance(value, Mapping) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
    ):
        return {str(k): float(v) for k, v in value.items()}
    raise TypeError('expected a list of numbers, a table {task = weight} or "uncertainty"')


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(float, _strict((int, float), "a number"))
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))
    conv.register_structure_hook(LabelSubset, _label_subset)
    conv.register_structure_hook(LossWeight, _loss_weight)
    conv.register_structure_hook(Any, lambda v, _t: v)
    return conv


_converter = _make_converter()


def _attrs_class(tp: Any) -> type | None:
    if attrs.has(tp):
        return tp
    if get_origin(tp) in (Union, types.UnionType):  # Optional[SomeTable]
        for arg in get_args(tp):
            if attrs.has(arg):
                return arg
    return None


def _unknown_keys(data: Mapping[str, Any], cls: type, prefix: str, out: list[tuple[str, str]]) -> None:
    fields = {f.name: f for f in attrs.fields(cls)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            out.append((dotted, f"unknown key{did_you_mean(key, fields)}"))
            continue
        tp = fields[key].type
        nested = _attrs_class(tp)
        if nested is not None and isinstance(value, Mapping):
            _unknown_keys(value, nested, dotted + ".", out)
        elif get_origin(tp) is dict and isinstance(value, Mapping):
            item = _attrs_class(get_args(tp)[1])
            if item is not None:
                for sub, subvalue in value.items():
                    if isinstance(subvalue, Mapping):
                        _unknown_keys(subvalue, item, f"{dotted}.{sub}.", out)


def _strip_unknown(data: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """Drop unknown keys so cattrs reports only the *other* problems (unknown keys are reported already)."""
    fields = {f.name: f for f in attrs.fields(cls)}
    result: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            continue
        tp = fields[key].type
        nested = _attrs_class(tp)
        if nested is not None and isinstance(value, Mapping):
            value = _strip_unknown(value, nested)
        elif get_origin(tp) is dict and isinstance(value, Mapping):
            item = _attrs_class(get_args(tp)[1])
            if item is not None:
                value = {
                    k: _strip_unknown(v, item) if isinstance(v, Mapping) else v for k, v in value.items()
                }
        result[key] = value
    return result


def _cattrs_problems(exc: BaseException) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []

    def describe(error: BaseException, type_: Any) -> str:
        if isinstance(error, (TypeError, ValueError)) and str(error).startswith("expected"):
            return str(error)  # our strict hooks already say what was expected and what came
        if attrs.has(type_):
            return "expected a table"
        return cattrs.v.format_exception(error, type_)

    for message in cattrs.transform_error(exc, path="$", format_exception=describe):
        text, _, where = message.rpartition(" @ ")
        dotted = where.removeprefix("$").lstrip(".")
        dotted = dotted.replace("['", ".").replace("']", "")
        if text.startswith("required field missing"):
            text = "required key missing"
        elif text.startswith("invalid value for type, expected "):
            text = text.replace("invalid value for type, ", "")
        problems.append((dotted, text))
    return problems


def _where(raw: RawConfig, dotted: str) -> str:
    """The file that set ``dotted`` (or the nearest parent key), for error messages."""
    key = dotted
    while key:
        if key in raw.provenance:
            return raw.provenance[key]
        hits = [src for k, src in raw.provenance.items() if k.startswith(key + ".")]
        if hits:
            return hits[-1]
        key = key.rpartition(".")[0]
    return raw.source_file


def structure(raw: RawConfig) -> ExperimentConfig:
    """Validate a merged raw config into an :class:`ExperimentConfig`; every problem is reported at once."""
    found: list[tuple[str, str]] = []
    _unknown_keys(raw.data, ExperimentConfig, "", found)
    config: ExperimentConfig | None = None
    try:
        config = _converter.structure(_strip_unknown(raw.data, ExperimentConfig), ExperimentConfig)
    except Exception as exc:  # cattrs raises exception groups of the individual problems
        found.extend(_cattrs_problems(exc))
    if config is not None:
        found.extend(_semantic_problems(config))
        found.extend(_global_label_problems(config))
    if found:
        raise ConfigError(f"{key}: {problem} ({_where(raw, key)})" for key, problem in found)
    assert config is not None
    return config


Problems = list[tuple[str, str]]


def _semantic_problems(cfg: ExperimentConfig) -> Problems:
    """Every value checked against its range or choices, table by table; non-finite numbers anywhere."""
    problems: Problems = []
    for check in (
        _top_problems,
        _data_problems,
        _split_problems,
        _derive_problems,
        _label_subset_problems,
        _path_problems,
        _model_problems,
        _head_problems,
        _train_problems,
        _loss_weight_problems,
        _resources_problems,
    ):
        problems.extend(check(cfg))
    reported = {key for key, _ in problems}
    problems.extend(p for p in _non_finite_problems(cfg) if p[0] not in reported)
    return problems


# ---- value checks: each returns [(key, problem)], empty when the value is fine (None: unset, fine) ----


def _choice(key: str, value: str | None, allowed: Sequence[str]) -> Problems:
    if value is None or value in allowed:
        return []
    return [(key, f"{value!r} is not one of {', '.join(allowed)}{did_you_mean(value, allowed)}")]


def _positive_ints(values: Mapping[str, int | None]) -> Problems:
    return [(key, f"must be positive, got {v}") for key, v in values.items() if v is not None and v <= 0]


def _at_least_zero(values: Mapping[str, int | None]) -> Problems:
    return [(key, f"must be >= 0, got {v}") for key, v in values.items() if v is not None and v < 0]


def _positive_number(key: str, value: float | None) -> Problems:
    if value is None or (math.isfinite(value) and value > 0):
        return []
    return [(key, f"must be a finite number > 0, got {value}")]


def _non_negative(key: str, value: float | None, note: str = "") -> Problems:
    if value is None or (math.isfinite(value) and value >= 0):
        return []
    return [(key, f"must be a finite number >= 0{note}, got {value}")]


def _fraction(key: str, value: float | None) -> Problems:
    """In [0, 1): a share of rows or steps, or a dropout probability (1 would drop everything)."""
    if value is None or 0 <= value < 1:  # NaN fails both comparisons
        return []
    return [(key, f"must be in [0, 1), got {value}")]


# ---- per table ------------------------------------------------------------------------------------


def _top_problems(cfg: ExperimentConfig) -> Problems:
    problems = _choice("task_type", cfg.task_type, TASK_TYPES)
    exp_id_issue = exp_id_problem(cfg.exp_id)
    if exp_id_issue is not None:
        problems.append(("exp_id", exp_id_issue))
    # multi_cls is accepted for 2+ tasks: the seed uses it for the double-label experiment too.
    seed_multi = cfg.task_type == "multi_cls" and len(cfg.task_columns) >= 2
    if cfg.task_type in TASK_TYPES and cfg.task_type != cfg.derived_task_type and not seed_multi:
        problems.append(
            (
                "task_type",
                f"{cfg.task_type!r} disagrees with data.label_subset, which has "
                f"{len(cfg.task_columns)} label column(s) ({cfg.derived_task_type})",
            )
        )
    return problems + _at_least_zero({"seed": cfg.seed})


def _data_problems(cfg: ExperimentConfig) -> Problems:
    d = cfg.data
    problems = [
        *_choice("data.encoding_errors", d.encoding_errors, ENCODING_ERRORS),
        *_choice("data.missing_labels", d.missing_labels, MISSING_LABELS),
        *_positive_ints({"data.max_len": d.max_len, "data.max_rows": d.max_rows}),
        *_at_least_zero({"data.sample_seed": d.sample_seed}),
    ]
    try:
        codecs.lookup(d.encoding)
    except LookupError:
        problems.append(("data.encoding", f"{d.encoding!r} is not a text encoding Python knows"))
    return problems


def _split_problems(cfg: ExperimentConfig) -> Problems:
    d = cfg.data
    problems = [*_fraction("data.val_ratio", d.val_ratio), *_fraction("data.test_ratio", d.test_ratio)]
    if d.val_data_path is None and d.val_ratio <= 0:
        problems.append(("data.val_ratio", "must be > 0 when data.val_data_path is not set"))
    # the shares taken from the training file must leave rows to train on
    val = d.val_ratio if d.val_data_path is None else 0.0
    test = d.test_ratio if d.test_data_path is None else 0.0
    if not problems and val + test >= 1:
        problems.append(("data.test_ratio", f"{test} + data.val_ratio {val} >= 1 leaves no rows to train on"))
    return problems


def _derive_problems(cfg: ExperimentConfig) -> Problems:
    problems: Problems = []
    for name, rule in cfg.data.derive.items():
        key = f"data.derive.{name}"
        if any(math.isnan(b) for b in rule.bins):
            problems.append((f"{key}.bins", f"edges must be numbers, got {rule.bins}"))
        elif len(rule.bins) != len(rule.labels) + 1:
            problems.append(
                (f"{key}.bins", f"{len(rule.bins)} edges for {len(rule.labels)} labels; need labels + 1")
            )
        elif any(b >= a for a, b in zip(rule.bins[1:], rule.bins, strict=False)):
            problems.append((f"{key}.bins", "edges must increase"))
        if len(rule.labels) < 2:
            problems.append((f"{key}.labels", f"needs at least 2 labels, got {rule.labels}"))
    return problems


def _label_subset_problems(cfg: ExperimentConfig) -> Problems:
    subset = cfg.data.label_subset
    if isinstance(subset, dict) and not subset:
        return [("data.label_subset", "is an empty table; give at least one column")]
    if subset is None:
        return []
    problems: Problems = []
    pairs = subset.items() if isinstance(subset, dict) else [("", subset)]
    for task, labels in pairs:
        key = f"data.label_subset.{task}" if task else "data.label_subset"
        if len(labels) < 2:
            problems.append((key, f"needs at least 2 labels, got {labels}"))
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            problems.append((key, f"repeats {dupes}"))
    return problems


def _path_problems(cfg: ExperimentConfig) -> Problems:
    """Input files that exist but are no files: a FIFO would block the first read for ever."""
    d = cfg.data
    paths = {"data.raw_data_path": d.raw_data_path, "data.val_data_path": d.val_data_path}
    paths["data.test_data_path"] = d.test_data_path  # the global map is checked where it is read
    problems = []
    for key, path in paths.items():
        problem = file_kind_problem(path) if path is not None else None
        if problem is not None:
            problems.append((key, f"{path}: {problem}"))
    if d.cache_dir is not None and Path(d.cache_dir).exists() and not Path(d.cache_dir).is_dir():
        problems.append(("data.cache_dir", f"{d.cache_dir}: not a directory"))
    return problems


def _model_problems(cfg: ExperimentConfig) -> Problems:
    m = cfg.model
    problems = _choice("model.pooling", m.pooling, POOLINGS)
    for name in ("lora", "dora"):
        table: LoraConfig = getattr(m, name)
        problems += _positive_ints({f"model.{name}.rank": table.rank, f"model.{name}.alpha": table.alpha})
        problems += _fraction(f"model.{name}.dropout", table.dropout)
        problems += _choice(f"model.{name}.bias", table.bias, LORA_BIASES)
    ff, targets = m.ia3.feedforward_modules, m.ia3.target_modules
    if ff and targets and set(ff) - set(targets):
        outside = sorted(set(ff) - set(targets))
        problems.append(("model.ia3.feedforward_modules", f"{outside} are not in model.ia3.target_modules"))
    return problems


def _head_problems(cfg: ExperimentConfig) -> Problems:
    m, tasks = cfg.model, cfg.task_columns
    problems = _fraction("model.head_dropout", m.head_dropout)
    problems += _positive_ints({"model.head_hidden_size": m.head_hidden_size})
    for task, head in m.heads.items():
        key = f"model.heads.{task}"
        if task not in tasks:
            problems.append((key, f"not a task{did_you_mean(task, tasks)}; tasks: {tasks}"))
        problems += _fraction(f"{key}.dropout", head.dropout)
        problems += _positive_ints({f"{key}.hidden_size": head.hidden_size})
    return problems


def _train_problems(cfg: ExperimentConfig) -> Problems:
    t = cfg.train
    problems = [
        *_choice("train.mixed_precision", t.mixed_precision, MIXED_PRECISION),
        *_choice("train.device", t.device, DEVICES),
        *_positive_number("train.lr", t.lr),
        *_fraction("train.warmup_ratio", t.warmup_ratio),
        *_non_negative("train.weight_decay", t.weight_decay),
        *_non_negative("train.max_grad_norm", t.max_grad_norm, " (0 or unset: no clipping)"),
    ]
    counts = {
        "train.batch_size": t.batch_size,
        "train.eval_batch_size": t.eval_batch_size,
        "train.epochs": t.epochs,
        "train.grad_accum": t.grad_accum,
        "train.early_stopping_patience": t.early_stopping_patience,
        "train.checkpoint_every_steps": t.checkpoint_every_steps,
    }
    problems += _positive_ints(counts)
    if t.save_strategy != "last" and not t.save_strategy.startswith("best_"):
        problems.append(
            ("train.save_strategy", f'expected "last" or "best_<metric>", got {t.save_strategy!r}')
        )
    return problems


def _loss_weight_problems(cfg: ExperimentConfig) -> Problems:
    """A weight for every task (a task left out would silently train at weight 0), none negative."""
    key, tasks, weight = "train.loss_weight", cfg.task_columns, cfg.train.loss_weight
    if weight is None or weight == "uncertainty":
        return []
    if isinstance(weight, str):
        return [(key, f'expected a list, a table or "uncertainty", got {weight!r}')]
    if isinstance(weight, list):
        if len(weight) != len(tasks):
            return [(key, f"has {len(weight)} weights for {len(tasks)} task(s) {tasks}")]
        problems = [
            (key, f"the weight of {task!r} must be a finite number >= 0, got {w}")
            for task, w in zip(tasks, weight, strict=True)
            if not (math.isfinite(w) and w >= 0)
        ]
        return problems or _all_zero(key, weight)
    problems = [
        (f"{key}.{name}", f"not a task{did_you_mean(name, tasks)}; tasks: {tasks}")
        for name in weight
        if name not in tasks
    ]
    missing = [task for task in tasks if task not in weight]
    if missing:
        problems.append((key, f"no weight for task(s) {missing}; give every task a weight"))
    for name, w in weight.items():
        problems += _non_negative(f"{key}.{name}", w)
    return problems or _all_zero(key, list(weight.values()))


def _all_zero(key: str, weights: Sequence[float]) -> Problems:
    return [(key, "every weight is 0: no task would be trained")] if not any(weights) else []


def _resources_problems(cfg: ExperimentConfig) -> Problems:
    r = cfg.resources
    return [
        *_choice("resources.priority", r.priority, PRIORITIES),
        *_positive_ints({"resources.gpus": r.gpus, "resources.memory_mb": r.memory_mb}),
    ]


def _non_finite_problems(cfg: ExperimentConfig) -> Problems:
    """NaN or infinity anywhere a number goes (loss options included); bin edges may be infinite."""
    problems: Problems = []
    for key, value in flatten_config(cfg).items():
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
        if key.startswith("data.derive.") and key.endswith(".bins"):
            bad = [v for v in bad if math.isnan(v)]
        if bad:
            problems.append((key, f"must be a finite number, got {bad[0]}"))
    return problems


def _global_label_problems(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """Every subset label must be in the global label map (the one truth for label names)."""
    from ..data.labels import read_global_label_map  # no heavy imports there

    if cfg.data.global_label_map is None:
        return []
    try:
        global_map = read_global_label_map(cfg.data.global_label_map)
    except ConfigError as exc:
        return [("data.global_label_map", p) for p in exc.problems]
    problems = []
    if cfg.task_columns and cfg.task_labels(cfg.task_columns[0]) is None and len(global_map) < 2:
        # the single task takes every label of the map
        problems.append(("data.global_label_map", f"has {len(global_map)} label(s); a task needs at least 2"))
    for task in cfg.task_columns:
        labels = cfg.task_labels(task) or []
        missing = [label for label in labels if label not in global_map]
        if missing:
            key = (
                f"data.label_subset.{task}"
                if isinstance(cfg.data.label_subset, dict)
                else "data.label_subset"
            )
            problems.append((key, f"labels {missing} are not in {cfg.data.global_label_map}"))
    return problems


def load_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = (), *, cwd: Path | None = None
) -> tuple[ExperimentConfig, RawConfig]:
    """Load, merge, override and validate a config. Raises :class:`ConfigError` listing every problem."""
    raw = load_raw(source, overrides, cwd=cwd)
    return structure(raw), raw


def defaults_provenance(raw: RawConfig, cfg: ExperimentConfig) -> dict[str, str]:
    """Provenance for every key of the validated config, ``default`` where no file set it."""
    full = flatten_config(cfg)
    return {key: raw.provenance.get(key, DEFAULT_SOURCE) for key in full}


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The validated config as plain data (what config_copy.toml and the index record)."""
    return _converter.unstructure(cfg)


def flatten_config(cfg: ExperimentConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            for k, v in value.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix.rstrip(".")] = value

    walk(to_dict(cfg), "")
    return flat
