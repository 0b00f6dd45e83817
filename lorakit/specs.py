"""What plugins register: one frozen attrs class per kind of thing.

Each spec carries a unique ``name`` and the callables that do the work. Heavy libraries
(torch, pandas) are imported inside those callables, never at module import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs


@attrs.define(kw_only=True, frozen=True)
class MetricSpec:
    """A metric over integer class predictions of one task.

    ``compute(y_true, y_pred, num_labels)`` takes two 1-D integer numpy arrays and returns a float.
    """

    name: str
    compute: Callable[..., float]
    greater_is_better: bool = True
    description: str = ""


@attrs.define(kw_only=True, frozen=True)
class LossSpec:
    """A loss for one task.

    ``build(num_labels=..., **options)`` returns a ``torch.nn.Module`` whose ``forward(logits, labels)``
    returns a scalar tensor. ``options`` come from ``train.loss_options`` (shared keys, then the task's own
    ``[train.loss_options.<task>]`` table over them). With an ``options`` class (attrs) they are
    structured and validated by it when the config loads, and ``build`` gets its fields; without one they
    pass as written.
    """

    name: str
    build: Callable[..., Any]
    options: type | None = None
    description: str = ""


@attrs.define(kw_only=True, frozen=True)
class LRSchedulerSpec:
    """An LR schedule: ``build(optimizer, num_warmup_steps, num_training_steps)`` → torch LR scheduler."""

    name: str
    build: Callable[..., Any]
    description: str = ""


@attrs.define(kw_only=True, frozen=True)
class ReadOptions:
    """How a data source decodes a file."""

    encoding: str = "utf-8"
    encoding_errors: str = "strict"


@attrs.define(kw_only=True, frozen=True)
class DataSourceSpec:
    """A reader for files with the given suffixes: ``read(path, options: ReadOptions)`` → pandas.DataFrame."""

    name: str
    suffixes: tuple[str, ...]
    read: Callable[..., Any]
    description: str = ""


@attrs.define(kw_only=True, frozen=True)
class BackboneSpec:
    """An encoder family.

    ``load_model(path_or_id)`` returns the bare encoder (no task head); ``load_tokenizer(path_or_id)``
    its fast tokenizer. ``target_modules`` are the default LoRA targets (``None``: detect them).
    ``model_types`` are the HF ``config.model_type`` values this backbone serves.
    ``activation_factor`` is the per-token activation constant used by memory estimates
    (bytes per batch x token x hidden x layer, fp32).
    """

    name: str
    model_types: tuple[str, ...] = ()
    load_model: Callable[..., Any]
    load_tokenizer: Callable[..., Any]
    target_modules: tuple[str, ...] | None = None
    pooling: str = "cls"
    activation_factor: float = 34.0
    provided_by: str = ""
    description: str = ""


@attrs.define(kw_only=True, frozen=True)
class TuningMethodSpec:
    """How the encoder is adapted: ``apply(model, target_modules, options: dict)`` → adapted model.

    ``options``: an attrs class for the method's own ``[model.<name>]`` table (structured and validated
    when the config loads; its fields' ``doc`` metadata lands in the config reference; a
    ``problems(table)`` method may return ``[(dotted key, problem)]`` for range checks). Its
    ``target_modules`` field, if it has one, overrides the backbone's targets; ``module_lists`` names the
    fields that hold module names (checked against the model before training). Without a class the table
    passes as written. ``options`` given to ``apply`` are the table's fields without ``target_modules``.

    ``trainable_parameters(layers, options)`` answers the memory estimate: ``layers`` are the adapted
    Linear layers as ``(name, in_features, out_features)`` and the result is the number of parameters the
    method adds (``options`` as for ``apply``). ``rank_option`` names the option that is the method's rank
    (what runs of the same config are compared on for memory), or None.

    ``library`` says who saves and loads the method's weights. ``"peft"`` (the default): ``apply`` returns a
    peft model, and the experiment folder's ``lora_adapter/`` is that model's ``save_pretrained``. Any other
    value: ``apply`` adds the method's own modules to the model in place (its parameters trainable, no other
    parameter's ``requires_grad`` changed) and returns it; ``state_dict(model)`` gives the method's weights
    (names stable from one ``apply`` to the next) and ``load_state_dict(model, state)`` puts them back into a
    model the method was applied to; the core writes them as ``lora_adapter/<name>.safetensors``.
    ``select_layers(model, options)``, if given, names (full dotted names) the Linear layers the method
    adapts, for the memory estimate and the method's own ``apply``, instead of the backbone's targets.

    One experiment may combine methods (``model.method = ["lora", "bottleneck"]``): at most one from
    peft, which is applied first; the others follow in the order the config lists them.
    """

    name: str
    apply: Callable[..., Any]
    options: type | None = None
    trainable_parameters: Callable[..., int] | None = None
    module_lists: tuple[str, ...] = ("target_modules",)
    rank_option: str | None = None
    description: str = ""
    library: str = "peft"
    state_dict: Callable[..., Any] | None = None
    load_state_dict: Callable[..., Any] | None = None
    select_layers: Callable[..., list[str]] | None = None

    def __attrs_post_init__(self) -> None:
        if not self.uses_peft and (self.state_dict is None or self.load_state_dict is None):
            raise ValueError(
                f"tuning method {self.name!r} ({self.library}) needs state_dict and load_state_dict: "
                "lorakit saves and loads the weights of methods that peft does not"
            )

    @property
    def uses_peft(self) -> bool:
        return self.library == "peft"


@attrs.define(kw_only=True, frozen=True)
class TaskHeadSpec:
    """A task head: ``build(hidden_size, num_labels, options: dict)`` → ``torch.nn.Module`` producing logits.

    ``probabilities(logits)`` turns the head's output into per-class probabilities (default: softmax);
    a head whose logits are not one per class (ordinal heads) supplies its own, and a matching loss.

    ``options`` given to ``build`` always hold ``dropout`` and ``hidden_size`` (``model.head_dropout``,
    ``model.head_hidden_size`` or the task's ``model.heads.<task>`` values; ``hidden_size`` may be None).
    An ``options`` class (attrs) structures and validates the head's own keys, from ``[model.head_options]``
    and ``[model.heads.<task>.options]`` over it; without one they pass as written.

    ``trainable_parameters(hidden_size, num_labels, options)`` answers the memory estimate; without it
    the head counts as one linear layer (``hidden_size × num_labels + num_labels``).
    """

    name: str
    build: Callable[..., Any]
    probabilities: Callable[..., Any] | None = None
    default_loss: str | None = None
    options: type | None = None
    trainable_parameters: Callable[..., int] | None = None
    description: str = ""


@attrs.define(kw_only=True, frozen=True)
class ExecutorSpec:
    """Where ``run-parallel`` runs jobs: ``create(**options)`` returns an executor object.

    ``options`` names the keyword options ``create`` takes (``--executor-option KEY=VALUE``, values are
    strings); None: the named keyword parameters of ``create``.
    """

    name: str
    create: Callable[..., Any]
    options: tuple[str, ...] | None = None
    extra: str | None = None
    #: the executor places jobs on resources of its own (a cluster): the scheduler only orders them,
    #: keeps at most ``capacity()`` (or ``--max-parallel``) outstanding, and preempts by priority
    places_jobs: bool = False
    description: str = ""


#: ``Device.compute_mode`` values, and how many jobs each lets the scheduler put on the device (None: any)
COMPUTE_MODES: dict[str, int | None] = {"default": None, "exclusive_process": 1, "prohibited": 0}
# A MIG slice's index is MIG_INDEX_BASE × (parent + 1) + slice: NVML indices stay below it.
MIG_INDEX_BASE = 100


@attrs.define(kw_only=True, frozen=True)
class Device:
    """One device of the inventory. Memory in MiB; ``kind`` is ``cuda`` or ``cpu``.

    ``index`` is the scheduler's handle: NVML's index for a whole GPU; for a MIG slice
    :meth:`mig_index_of` ``(parent_index, mig_index)`` (GPU 0's slices are 100, 101, ...; GPU 1's 200, ...),
    unique and stable while the GPU's MIG layout stays. ``uuid`` is what jobs get in
    ``CUDA_VISIBLE_DEVICES`` (``GPU-...``, or ``MIG-...`` for a slice); a device without one gets its index.
    ``compute_mode`` is ``default``, ``exclusive_process`` (one job at a time) or ``prohibited`` (none).
    """

    index: int
    name: str
    kind: str = "cuda"
    total_mb: int = 0
    free_mb: int = 0
    used_mb: int = 0
    utilization: float | None = None
    uuid: str | None = None
    #: for a MIG slice: NVML's index of the GPU it is carved from, and its index among that GPU's slices
    parent_index: int | None = None
    mig_index: int | None = None
    compute_mode: str = attrs.field(default="default", validator=attrs.validators.in_(COMPUTE_MODES))

    @staticmethod
    def mig_index_of(parent_index: int, mig_index: int) -> int:
        """The scheduler's index of slice ``mig_index`` of GPU ``parent_index``."""
        return MIG_INDEX_BASE * (parent_index + 1) + mig_index

    @property
    def is_mig(self) -> bool:
        return self.parent_index is not None

    @property
    def label(self) -> str:
        """How the queue shows it: ``GPU-0``, or ``GPU-0/MIG-1`` for slice 1 of GPU 0."""
        if self.parent_index is None:
            return f"GPU-{self.index}"
        return f"GPU-{self.parent_index}/MIG-{self.mig_index}"

    @property
    def max_jobs(self) -> int | None:
        """How many jobs the device takes at once (None: as many as fit)."""
        return COMPUTE_MODES[self.compute_mode]


SPEC_KINDS: dict[str, type] = {
    "backbones": BackboneSpec,
    "tuning_methods": TuningMethodSpec,
    "task_heads": TaskHeadSpec,
    "losses": LossSpec,
    "metrics": MetricSpec,
    "lr_schedulers": LRSchedulerSpec,
    "data_sources": DataSourceSpec,
    "executors": ExecutorSpec,
}
