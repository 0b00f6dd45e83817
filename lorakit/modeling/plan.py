"""The model plan: what training, prediction and the memory estimate build, decided once.

From the config, the plugins and the model's Hugging Face config (``AutoConfig``, no weights): the backbone,
the tuning method and its options, the target modules, and per task its head, loss and their options.
Nothing here imports torch (transformers' ``AutoConfig`` may, on its own); the one thing only the model
itself can tell, the attention projections of an encoder no backbone names, is left to
:func:`with_detected_targets` (training) or the estimate's meta-device model.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..config.options import as_options, head_options, loss_options, task_head, task_loss
from ..config.schema import ExperimentConfig
from ..errors import ConfigError, PluginError
from ..plugins import Plugins
from ..specs import BackboneSpec, TaskHeadSpec, TuningMethodSpec


@attrs.define(kw_only=True)
class TaskPlan:
    """How one task is modelled: its head, its loss and their options, its number of labels."""

    name: str
    num_labels: int
    head: str
    head_spec: TaskHeadSpec
    head_options: dict[str, Any]
    loss: str
    loss_options: dict[str, Any] = attrs.field(factory=dict)
    #: the keys of ``loss_options`` the task's own ``[train.loss_options.<task>]`` table set
    own_loss_keys: tuple[str, ...] = ()


@attrs.define(kw_only=True)
class MethodPart:
    """One tuning method of the model: its spec, its options and the modules it adapts.

    ``target_modules`` is None until detected where neither the config nor the backbone names them.
    """

    name: str
    spec: TuningMethodSpec
    options: dict[str, Any]
    target_modules: list[str] | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options, "target_modules": self.target_modules}


@attrs.define(kw_only=True)
class ModelPlan:
    """Everything needed to rebuild the same model for training or prediction (saved as heads.json).

    ``parts``: the tuning methods in the config's order (one, or a combination)."""

    arch: str
    backbone: str
    parts: list[MethodPart]
    pooling: str
    tasks: list[TaskPlan]
    backbone_spec: BackboneSpec | None = None

    @property
    def method(self) -> str:
        """The combination's one name: ``lora``, ``lora+bottleneck``."""
        return "+".join(p.name for p in self.parts)

    def applied_order(self) -> list[MethodPart]:
        """The order the methods are applied in: the peft one first (it wraps the model), then the rest."""
        return sorted(self.parts, key=lambda p: not p.spec.uses_peft)

    @property
    def peft_part(self) -> MethodPart | None:
        return next((p for p in self.parts if p.spec.uses_peft), None)

    def to_json(self) -> dict[str, Any]:
        first = self.parts[0]
        return {
            "arch": self.arch,
            "backbone": self.backbone,
            # the first method's keys as before combinations existed (older readers); "methods" holds all
            "method": self.method,
            "method_options": first.options,
            "target_modules": first.target_modules,
            "methods": [p.to_json() for p in self.parts],
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


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_model_config(arch: str) -> Any:
    """The model's Hugging Face config (no weights); a ConfigError naming ``model.arch`` if it cannot load."""
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(arch)
    except (OSError, ValueError) as exc:
        raise ConfigError([f"model.arch: cannot load {arch!r}: {_first_line(exc)}"]) from None


def lookup(registry: Any, name: str, key: str) -> Any:
    """A registry lookup whose error names the config key that asked for it."""
    try:
        return registry.get(name)
    except PluginError as exc:
        raise PluginError(f"{key}: {exc}") from None


def resolve_backbone(cfg: ExperimentConfig, plugins: Plugins, hf_config: Any = None) -> BackboneSpec:
    """``model.backbone`` if set, else what the plugins pick for the model's ``model_type``."""
    if cfg.model.backbone:
        return lookup(plugins.backbones(), cfg.model.backbone, "model.backbone")
    if hf_config is None:
        hf_config = load_model_config(cfg.model.arch)
    name = plugins.resolve_backbone(hf_config) or "auto"
    return plugins.backbones().get(name)


def config_label_counts(cfg: ExperimentConfig) -> dict[str, int]:
    """Each task's number of labels as far as the config tells (subset, else the global map, else 2)."""
    from ..config.labelmap import read_global_label_map

    counts = {}
    for task in cfg.task_columns:
        labels = cfg.task_labels(task)
        count = len(labels) if labels else 2
        if not labels and cfg.data.global_label_map:
            try:
                count = len(read_global_label_map(cfg.data.global_label_map))
            except ConfigError:
                pass
        counts[task] = count
    return counts


def _task_plan(
    cfg: ExperimentConfig, task: str, num_labels: int, plugins: Plugins, check_names: bool
) -> TaskPlan:
    name, key, _ = task_head(cfg, task, plugins)
    spec = lookup(plugins.task_heads(), name, key)
    loss, loss_key = task_loss(cfg, task, spec)
    losses = plugins.losses()
    loss_cls = lookup(losses, loss, loss_key).options if check_names or loss in losses else None
    override = cfg.model.heads.get(task)
    options: dict[str, Any] = {
        "dropout": override.dropout if override and override.dropout is not None else cfg.model.head_dropout,
        "hidden_size": override.hidden_size
        if override and override.hidden_size
        else cfg.model.head_hidden_size,
    }
    options.update(head_options(cfg, task, spec)[0])
    own = cfg.train.loss_options.get(task)
    own_keys = tuple(own) if task in cfg.task_columns and isinstance(own, dict) else ()
    return TaskPlan(
        name=task,
        num_labels=num_labels,
        head=name,
        head_spec=spec,
        head_options=options,
        loss=loss,
        loss_options=loss_options(cfg, task, loss_cls)[0],
        own_loss_keys=own_keys,
    )


def plan_model(
    cfg: ExperimentConfig,
    label_counts: dict[str, int],
    plugins: Plugins,
    *,
    hf_config: Any = None,
    check_names: bool = True,
) -> ModelPlan:
    """Decide backbone, method, targets, heads and losses; every plugin name is checked here, before
    any folder exists or any weight loads. ``hf_config`` is loaded when the backbone must be resolved.

    ``check_names=False`` (the memory estimate) checks only what the model's shape depends on: backbone,
    method and heads; losses, LR schedule and metrics are the run's to refuse."""
    backbone = resolve_backbone(cfg, plugins, hf_config)
    parts = _method_parts(cfg, plugins, backbone)
    if check_names:
        lookup(plugins.lr_schedulers(), cfg.train.lr_scheduler, "train.lr_scheduler")
        for metric in cfg.train.metrics:
            lookup(plugins.metrics(), metric, "train.metrics")
    tasks = [_task_plan(cfg, t, label_counts[t], plugins, check_names) for t in cfg.task_columns]
    return ModelPlan(
        arch=cfg.model.arch,
        backbone=backbone.name,
        parts=parts,
        pooling=cfg.model.pooling or backbone.pooling,
        tasks=tasks,
        backbone_spec=backbone,
    )


def _method_parts(cfg: ExperimentConfig, plugins: Plugins, backbone: BackboneSpec) -> list[MethodPart]:
    """Each method of ``model.method`` with its options and targets; a combination that cannot work
    together (two peft methods, a method that cannot save its own weights) is a config error."""
    parts = []
    for name in cfg.model.methods:
        spec = lookup(plugins.tuning_methods(), name, "model.method")
        options = as_options(cfg.model.tuning.get(name))
        targets = options.pop("target_modules", None)
        if not targets and spec.select_layers is None and backbone.target_modules:
            targets = list(backbone.target_modules)
        parts.append(
            MethodPart(
                name=name, spec=spec, options=options, target_modules=None if not targets else list(targets)
            )
        )
    if len(parts) > 1:
        peft = [p.name for p in parts if p.spec.uses_peft]
        if len(peft) > 1:
            raise ConfigError(
                [
                    f"model.method: {' and '.join(peft)} are both peft methods; a combination holds at most "
                    "one (add another kind, such as bottleneck from lorakit-adapters)"
                ]
            )
    return parts


def option_module_lists(cfg: ExperimentConfig, plan: ModelPlan) -> dict[str, list[str]]:
    """The module names the methods' options give (``model.<method>.<option>`` → names), to check
    against the model before training."""
    lists = {}
    for part in plan.parts:
        given = as_options(cfg.model.tuning.get(part.name))
        for option in part.spec.module_lists:
            names = given.get(option)
            if names:
                lists[f"model.{part.name}.{option}"] = list(names)
    return lists


def with_detected_targets(plan: ModelPlan, encoder: Any) -> ModelPlan:
    """``plan`` with the encoder's attention projections as targets of each method where nobody named
    any (this one step needs the model: a real one for training, a meta-device one for the estimate)."""
    from .targets import detect_attention_modules

    parts = [
        p
        if p.target_modules is not None or p.spec.select_layers is not None
        else attrs.evolve(p, target_modules=detect_attention_modules(encoder, p.name))
        for p in plan.parts
    ]
    return attrs.evolve(plan, parts=parts)
