"""From config to model: resolve the backbone, adapt the encoder, add one head and one loss per task."""

from __future__ import annotations

from typing import Any

import attrs

from ..config.schema import ExperimentConfig
from ..errors import ConfigError, PluginError
from ..plugins import Plugins
from ..specs import BackboneSpec, TaskHeadSpec
from .targets import detect_attention_modules, quiet_peft, target_module_problems


@attrs.define(kw_only=True)
class TaskPlan:
    """How one task is modelled: its head, its loss and its labels."""

    name: str
    num_labels: int
    head: str
    head_spec: TaskHeadSpec
    head_options: dict[str, Any]
    loss: str


@attrs.define(kw_only=True)
class ModelPlan:
    """Everything needed to rebuild the same model for training or prediction (saved as heads.json)."""

    arch: str
    backbone: str
    method: str
    method_options: dict[str, Any]
    target_modules: list[str]
    pooling: str
    tasks: list[TaskPlan]

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "backbone": self.backbone,
            "method": self.method,
            "method_options": self.method_options,
            "target_modules": self.target_modules,
            "pooling": self.pooling,
            "tasks": [
                {
                    "name": t.name,
                    "num_labels": t.num_labels,
                    "head": t.head,
                    "head_options": t.head_options,
                    "loss": t.loss,
                }
                for t in self.tasks
            ],
        }


def resolve_backbone(cfg: ExperimentConfig, plugins: Plugins) -> BackboneSpec:
    """``model.backbone`` if set, else what the plugins pick for the model's ``model_type``."""
    if cfg.model.backbone:
        try:
            return plugins.backbones().get(cfg.model.backbone)
        except PluginError as exc:
            raise PluginError(f"model.backbone: {exc}") from None
    import transformers

    try:
        hf_config = transformers.AutoConfig.from_pretrained(cfg.model.arch)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError([f"model.arch: cannot load {cfg.model.arch!r}: {first}"]) from None
    name = plugins.resolve_backbone(hf_config) or "auto"
    return plugins.backbones().get(name)


def method_options(cfg: ExperimentConfig) -> dict[str, Any]:
    table = getattr(cfg.model, cfg.model.method, None)
    return attrs.asdict(table) if table is not None else {}


def _lookup(registry: Any, name: str, key: str) -> Any:
    """A registry lookup whose error names the config key that asked for it."""
    try:
        return registry.get(name)
    except PluginError as exc:
        raise PluginError(f"{key}: {exc}") from None


def plan_model(
    cfg: ExperimentConfig, label_counts: dict[str, int], plugins: Plugins, encoder: Any
) -> ModelPlan:
    """Decide backbone, targets, heads and losses; plugin names are checked here, before any folder exists."""
    backbone = resolve_backbone(cfg, plugins)
    _lookup(plugins.tuning_methods(), cfg.model.method, "model.method")
    _lookup(plugins.lr_schedulers(), cfg.train.lr_scheduler, "train.lr_scheduler")
    for metric in cfg.train.metrics:
        _lookup(plugins.metrics(), metric, "train.metrics")
    options = method_options(cfg)
    _check_targets(cfg, options, encoder)
    targets = options.get("target_modules") or (
        list(backbone.target_modules) if backbone.target_modules else detect_attention_modules(encoder)
    )
    tasks = []
    for task in cfg.task_columns:
        override = cfg.model.heads.get(task)
        head_key = f"model.heads.{task}.type" if override and override.type else "model.head"
        head_name = (override.type if override and override.type else None) or cfg.model.head
        head_spec = _lookup(plugins.task_heads(), head_name, head_key)
        loss = (
            (override.loss if override and override.loss else None)
            or head_spec.default_loss
            or cfg.train.loss
        )
        loss_key = f"model.heads.{task}.loss" if override and override.loss else "train.loss"
        _lookup(plugins.losses(), loss, loss_key)
        head_options = {
            "dropout": override.dropout
            if override and override.dropout is not None
            else cfg.model.head_dropout,
            "hidden_size": override.hidden_size
            if override and override.hidden_size
            else cfg.model.head_hidden_size,
        }
        tasks.append(
            TaskPlan(
                name=task,
                num_labels=label_counts[task],
                head=head_name,
                head_spec=head_spec,
                head_options=head_options,
                loss=loss,
            )
        )
    return ModelPlan(
        arch=cfg.model.arch,
        backbone=backbone.name,
        method=cfg.model.method,
        method_options={k: v for k, v in options.items() if k != "target_modules"},
        target_modules=list(targets),
        pooling=cfg.model.pooling or backbone.pooling,
        tasks=tasks,
    )


def _check_targets(cfg: ExperimentConfig, options: dict[str, Any], encoder: Any) -> None:
    """Module names the config gives must pick layers of this encoder (peft's error is a traceback)."""
    problems = []
    for option in ("target_modules", "feedforward_modules"):
        names = options.get(option)
        if names:
            problems += target_module_problems(encoder, list(names), f"model.{cfg.model.method}.{option}")
    if problems:
        raise ConfigError(problems)


def load_backbone_encoder(cfg: ExperimentConfig, plugins: Plugins) -> tuple[BackboneSpec, Any]:
    """The backbone plugin and its encoder; ``data.max_len`` is checked against the encoder's positions."""
    backbone = resolve_backbone(cfg, plugins)
    try:
        encoder = backbone.load_model(cfg.model.arch)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError([f"model.arch: cannot load {cfg.model.arch!r}: {first}"]) from None
    limit = position_limit(encoder)
    if limit is not None and cfg.data.max_len > limit:
        raise ConfigError(
            [
                f"data.max_len: {cfg.data.max_len} is more than the {limit} positions of {cfg.model.arch!r}; "
                f"use at most {limit}"
            ]
        )
    return backbone, encoder


def position_limit(encoder: Any) -> int | None:
    """The most tokens the encoder's position table holds, or None where it has none (relative or rotary
    positions take any length).

    RoBERTa-style embeddings number positions from ``padding_idx + 1`` (their embeddings module has a
    ``padding_idx``), so a table of 514 holds 512 tokens; BERT-style ones start at 0.
    """
    embeddings = getattr(encoder, "embeddings", None)
    size = getattr(getattr(embeddings, "position_embeddings", None), "num_embeddings", None)
    if not isinstance(size, int) or size <= 0:
        return None
    padding_idx = getattr(embeddings, "padding_idx", None)
    offset = padding_idx + 1 if isinstance(padding_idx, int) and padding_idx >= 0 else 0
    return size - offset


def build_classifier(plan: ModelPlan, encoder: Any, plugins: Plugins, seed: int) -> Any:
    """Adapt ``encoder`` with the plan's tuning method and add the heads (seeded: same seed, same init)."""
    import torch

    from .model import MultiTaskClassifier

    torch.manual_seed(seed)
    method = plugins.tuning_methods().get(plan.method)
    try:
        with quiet_peft():
            adapted = method.apply(encoder, plan.target_modules, plan.method_options)
    except ValueError as exc:  # peft's refusal of an option or a layer: the config's to fix, in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError([f"model.{plan.method}: {plan.method} cannot adapt this model: {first}"]) from None
    hidden = encoder.config.hidden_size
    heads = [t.head_spec.build(hidden, t.num_labels, dict(t.head_options)) for t in plan.tasks]
    return MultiTaskClassifier(adapted, heads, [t.name for t in plan.tasks], plan.pooling)


def build_losses(cfg: ExperimentConfig, plan: ModelPlan, plugins: Plugins) -> Any:
    from .model import TaskLossCombiner

    losses = [
        plugins.losses().get(t.loss).build(num_labels=t.num_labels, **cfg.train.loss_options)
        for t in plan.tasks
    ]
    weight = cfg.train.loss_weight
    tasks = [t.name for t in plan.tasks]
    if isinstance(weight, dict):
        weights: list[float] | None = [weight.get(t, 0.0) for t in tasks]
    elif isinstance(weight, list):
        weights = weight
    else:
        weights = None
    return TaskLossCombiner(losses, weights, uncertainty=weight == "uncertainty")


def check_heads_and_losses(plan: ModelPlan, classifier: Any, combiner: Any, hidden_size: int) -> None:
    """Run each head and its loss on a dummy batch, so that a head and a loss that do not fit together
    (an ordinal loss on a linear head) are a config error before the folder exists, not a failed run."""
    import torch

    pooled = torch.zeros(2, hidden_size)
    labels = torch.zeros(2, dtype=torch.long)
    for i, task in enumerate(plan.tasks):
        head = classifier.heads[f"t{i}"]
        was_training = head.training
        head.eval()  # no dropout: the check draws nothing from the RNG, so runs stay reproducible
        try:
            with torch.no_grad():
                combiner.losses[i](head(pooled), labels)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                [
                    f"model.heads.{task.name}: head {task.head!r} and loss {task.loss!r} do not fit together: {reason}"
                ]
            ) from None
        finally:
            head.train(was_training)
