"""From plan to model: load the encoder, adapt it, add one head and one loss per task (torch lives here;
the decisions are made in :mod:`lorakit.modeling.plan`)."""

from __future__ import annotations

from typing import Any

from ..config.schema import ExperimentConfig
from ..errors import ConfigError
from ..plugins import Plugins
from ..specs import BackboneSpec
from .plan import ModelPlan, TaskPlan, option_module_lists, resolve_backbone, with_detected_targets
from .plan import plan_model as make_plan
from .targets import quiet_peft, target_module_problems

__all__ = ["ModelPlan", "TaskPlan", "plan_model", "resolve_backbone"]


def plan_model(
    cfg: ExperimentConfig, label_counts: dict[str, int], plugins: Plugins, encoder: Any
) -> ModelPlan:
    """The model plan (:func:`lorakit.modeling.plan.plan_model`) completed with ``encoder``: the module
    names the config gives are checked against it, and targets no one named are detected in it."""
    plan = make_plan(cfg, label_counts, plugins, hf_config=getattr(encoder, "config", None))
    problems = []
    for key, names in option_module_lists(cfg, plan).items():
        problems += target_module_problems(encoder, names, key)
    if problems:
        raise ConfigError(problems)
    return with_detected_targets(plan, encoder)


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
    adapted = apply_methods(plan, encoder)
    hidden = encoder.config.hidden_size
    heads = [t.head_spec.build(hidden, t.num_labels, dict(t.head_options)) for t in plan.tasks]
    return MultiTaskClassifier(adapted, heads, [t.name for t in plan.tasks], plan.pooling)


def apply_methods(plan: ModelPlan, encoder: Any) -> Any:
    """The encoder adapted by each tuning method of the plan: frozen first, then the peft method (it wraps
    the model), then the others in the config's order, each adding its own trainable modules."""
    encoder.requires_grad_(False)
    adapted = encoder
    for part in plan.applied_order():
        try:
            with quiet_peft():
                adapted = part.spec.apply(adapted, part.target_modules, part.options)
        except ValueError as exc:  # a refusal of an option or a layer: the config's to fix, in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError([f"model.{part.name}: {part.name} cannot adapt this model: {first}"]) from None
    return adapted


def tuning_record(plan: ModelPlan, classifier: Any) -> list[dict[str, Any]]:
    """Each tuning method of the built model, in the config's order: its options, targets and the
    trainable parameters it added (what run.json's ``tuning`` and ``lorakit show`` give)."""
    encoder = classifier.encoder
    counts = {p.name: method_size(p, encoder) for p in plan.parts if not p.spec.uses_peft}
    peft = plan.peft_part
    if peft is not None:
        trainable = sum(int(p.numel()) for p in encoder.parameters() if p.requires_grad)
        counts[peft.name] = trainable - sum(counts.values())
    return [
        {
            "method": p.name,
            "options": p.options,
            "target_modules": p.target_modules,
            "trainable_params": counts[p.name],
        }
        for p in plan.parts
    ]


def method_size(part: Any, model: Any) -> int:
    """The number of weights a method that peft does not handle keeps in ``model``."""
    state: dict[str, Any] = part.spec.state_dict(model)
    return sum(int(v.numel()) for v in state.values())


def build_losses(cfg: ExperimentConfig, plan: ModelPlan, plugins: Plugins) -> Any:
    from .model import TaskLossCombiner

    losses = [_build_loss(t, plugins) for t in plan.tasks]
    weight = cfg.train.loss_weight
    tasks = [t.name for t in plan.tasks]
    if isinstance(weight, dict):
        weights: list[float] | None = [weight.get(t, 0.0) for t in tasks]
    elif isinstance(weight, list):
        weights = weight
    else:
        weights = None
    return TaskLossCombiner(losses, weights, uncertainty=weight == "uncertainty")


def _build_loss(task: TaskPlan, plugins: Plugins) -> Any:
    """The task's loss; a loss's complaint about an option the task's own table set names that table."""
    try:
        return plugins.losses().get(task.loss).build(num_labels=task.num_labels, **task.loss_options)
    except ConfigError as exc:
        shared, own = "train.loss_options.", f"train.loss_options.{task.name}."
        lines = [
            own + line.removeprefix(shared)
            if line.startswith(shared)
            and line.removeprefix(shared).split(":")[0].split(".")[0] in task.own_loss_keys
            else line
            for line in exc.problems
        ]
        raise ConfigError(lines) from None


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
