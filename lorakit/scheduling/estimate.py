"""Expected peak GPU memory of one training run, from a formula or from earlier runs' measurements.

The formula, per GPU (MiB = 2**20 bytes):

* **frozen weights**: every encoder parameter × 4 bytes. Mixed precision (fp16/bf16) is autocast: it
  computes in half precision but keeps the loaded weights in fp32, and the trainer loads them in fp32.
  The parameters are counted from the model's Hugging Face config on PyTorch's ``meta``
  device: no weights are read or allocated.
* **LoRA + heads**: trainable parameters × 16 bytes: fp32 weights, gradients, and AdamW's two moments.
* **activations**: batch × max_len × hidden × layers × the backbone's ``activation_factor`` bytes
  (:class:`lorakit.specs.BackboneSpec`; 34 for BERT: the per-token, per-layer activations a transformer
  layer keeps for its backward pass, in units of hidden size; the attention score matrices are folded
  into the constant at typical max_len). Halved under fp16/bf16 autocast (``train.mixed_precision``;
  ``auto`` counts as bf16, see :func:`job_precision`).
* **CUDA context**: 500 MiB (:data:`CUDA_CONTEXT_MB`), what the driver and kernels take before the first
  tensor; ``torch.cuda.max_memory_reserved`` does not count it, NVML does.

Calibration: every run records ``peak_memory_mb`` (allocated) and ``peak_reserved_mb`` in its
``env_info.json`` and ``run.json`` (a run of several GPUs: the largest over its ranks, and each rank's in
``peak_reserved_mb_per_rank``). When completed runs **on a GPU** exist with the same
:class:`CalibrationKey` (model, batch size, max_len, the tuning method and its rank, precision, number of
GPUs, number of heads), the estimate is the largest reserved peak of any of their ranks plus the CUDA
context, and says so. CPU runs record the process's resident memory instead and are never used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..config.schema import ExperimentConfig, ModelConfig
from ..plugins import Plugins

if TYPE_CHECKING:
    from ..modeling.plan import ModelPlan, TaskPlan

#: what ``model.method`` is when a config (or an old run record) does not say
DEFAULT_METHOD: str = str(attrs.fields(ModelConfig).method.default)

MIB = 2**20
CUDA_CONTEXT_MB = 500
WEIGHT_BYTES = 4  # fp32 as loaded; autocast does not change stored weights
TRAINABLE_BYTES = 16  # fp32 weight + grad + AdamW exp_avg + exp_avg_sq
HALF_PRECISION_ACTIVATIONS = 0.5


@attrs.define(kw_only=True, frozen=True)
class Calibration:
    """Measured peaks of earlier GPU runs with the same :class:`CalibrationKey`."""

    runs: tuple[str, ...]
    max_reserved_mb: float

    @property
    def total_mb(self) -> int:
        return math.ceil(self.max_reserved_mb + CUDA_CONTEXT_MB)


@attrs.define(kw_only=True, frozen=True)
class MemoryEstimate:
    """Peak GPU memory of one run, per GPU, in MiB.

    ``source`` is ``formula``, ``calibrated`` (measured on earlier runs) or ``config``
    (``resources.memory_mb`` was set). ``parts`` is the formula's breakdown (absent for ``config``).
    """

    exp_id: str
    total_mb: int
    source: str
    parts: dict[str, float] = attrs.field(factory=dict)
    details: dict[str, str] = attrs.field(factory=dict)
    params: int | None = None
    trainable_params: int | None = None
    formula_mb: int | None = None
    calibration: Calibration | None = None
    precision: str = "fp32"  # what a GPU job of the config trains in (job_precision)

    def summary(self) -> str:
        """One line: the figure and where it comes from."""
        if self.source == "config":
            return f"{self.total_mb} MiB (resources.memory_mb, set in the config)"
        if self.calibration is not None:
            n = len(self.calibration.runs)
            return (
                f"{self.total_mb} MiB (calibrated from {n} run{'s' if n != 1 else ''}: max reserved "
                f"{self.calibration.max_reserved_mb:.0f} MiB + CUDA context {CUDA_CONTEXT_MB} MiB; "
                f"formula: {self.formula_mb} MiB)"
            )
        return (
            f"{self.total_mb} MiB (formula; no completed GPU run with this model, batch, max_len, method, "
            "rank, precision, GPU count and heads yet)"
        )

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=True)
        if self.calibration is not None:
            data["calibration"]["runs"] = list(self.calibration.runs)
        data["summary"] = self.summary()
        return data


def job_precision(requested: str) -> str:
    """The precision (``fp32 | bf16 | fp16``) a GPU job trains in for ``train.mixed_precision = requested``.

    ``auto`` is bf16 here: the trainer picks bf16 on a GPU that supports it (every GPU since Ampere) and
    fp32 on older ones, where this estimate is low (set ``train.mixed_precision = "no"`` there).
    """
    return {"no": "fp32", "auto": "bf16"}.get(requested, requested)


@attrs.define(kw_only=True, frozen=True)
class CalibrationKey:
    """What makes two runs comparable for memory. ``rank`` is the tuning method's (None: it has none)."""

    model: str
    batch_size: int
    max_len: int
    rank: int | None
    method: str
    precision: str
    world_size: int
    heads: int


def calibration_key(cfg: ExperimentConfig) -> CalibrationKey:
    """The key of ``cfg``'s run: model, batch, max_len, rank, method, precision, GPUs, heads."""
    rank = getattr(cfg.model.method_options, "rank", None)
    return CalibrationKey(
        model=cfg.model.arch,
        batch_size=cfg.train.batch_size,
        max_len=cfg.data.max_len,
        rank=None if rank is None else int(rank),
        method=cfg.model.method_name,
        precision=job_precision(cfg.train.mixed_precision),
        world_size=max(1, cfg.resources.gpus),
        heads=len(cfg.task_columns),
    )


def recorded_key(run: dict[str, Any]) -> CalibrationKey | None:
    """The key a run.json records (None: too old or damaged to say). Missing fields take the values
    runs had before they were recorded: lora, fp32, one process."""
    params = run.get("key_params")
    tasks = run.get("tasks")
    if not isinstance(params, dict) or not isinstance(tasks, dict):
        return None
    method = params.get("method", DEFAULT_METHOD)
    # older runs recorded the default method's rank as lora_rank whatever the method: it is the method's
    # rank for the default method only
    rank = (
        params["rank"] if "rank" in params else params.get("lora_rank") if method == DEFAULT_METHOD else None
    )
    try:
        return CalibrationKey(
            model=params["model"],
            batch_size=params["batch_size"],
            max_len=params["max_len"],
            rank=rank,
            method=method,
            precision=run.get("precision") or "fp32",
            world_size=run.get("world_size") or 1,
            heads=len(tasks),
        )
    except KeyError:
        return None


def find_calibration(outputs: str | Path, key: CalibrationKey) -> Calibration | None:
    """Completed GPU runs under ``outputs`` matching ``key``, read from their run.json and env_info.json."""
    root = Path(outputs)
    if not root.is_dir():
        return None
    runs: list[tuple[str, float]] = []
    for run_path in sorted(root.glob("*/run.json")):
        read = _read_folder(run_path.parent)
        if read is None:
            continue  # a damaged folder calibrates nothing (ls names it)
        run, env = read
        if run.get("status") != "completed" or not _on_gpu(run, env):
            continue  # CPU runs record resident memory, not GPU memory
        peak = peak_reserved_mb(run, env)
        if peak is not None and recorded_key(run) == key:
            runs.append((run_path.parent.name, peak))
    if not runs:
        return None
    return Calibration(runs=tuple(name for name, _ in runs), max_reserved_mb=max(v for _, v in runs))


def peak_reserved_mb(run: dict[str, Any], env: dict[str, Any]) -> float | None:
    """The run's reserved peak on its busiest GPU: the largest over every rank's figure it recorded."""
    per_rank = run.get("peak_reserved_mb_per_rank")
    figures = [run.get("peak_reserved_mb"), env.get("peak_reserved_mb")]
    figures += per_rank if isinstance(per_rank, list) else []
    numbers = [float(v) for v in figures if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(numbers) if numbers else None


def _on_gpu(run: dict[str, Any], env: dict[str, Any]) -> bool:
    return any(str(where or "").startswith("GPU") for where in (env.get("device"), run.get("device_used")))


def _read_folder(folder: Path) -> tuple[Any, dict[str, Any]] | None:
    """A folder's run record and env_info through the checked readers; None when either is damaged."""
    from ..errors import DamagedFile
    from ..runs.layout import RunLayout

    layout = RunLayout(folder)
    try:
        return layout.read_run(), layout.read_env()
    except DamagedFile:
        return None


def estimate_memory(
    cfg: ExperimentConfig,
    *,
    plugins: Plugins,
    outputs: str | Path | None = None,
    use_config: bool = True,
) -> MemoryEstimate:
    """The expected peak GPU memory of ``cfg``'s run (per GPU).

    ``resources.memory_mb`` wins when set (and ``use_config``); else a calibration from completed GPU
    runs under ``outputs``; else the formula. The formula's parts are computed in every case but the first.
    """
    if use_config and cfg.resources.memory_mb is not None:
        return MemoryEstimate(
            exp_id=cfg.exp_id,
            total_mb=cfg.resources.memory_mb,
            source="config",
            precision=job_precision(cfg.train.mixed_precision),
        )
    formula = formula_estimate(cfg, plugins)
    calibration = find_calibration(outputs, calibration_key(cfg)) if outputs is not None else None
    if calibration is None:
        return formula
    return attrs.evolve(
        formula,
        total_mb=calibration.total_mb,
        source="calibrated",
        calibration=calibration,
    )


def formula_estimate(cfg: ExperimentConfig, plugins: Plugins) -> MemoryEstimate:
    """The formula of the module docstring, from the model's config alone."""
    counts = count_parameters(cfg, plugins)
    precision = job_precision(cfg.train.mixed_precision)
    half = precision in ("fp16", "bf16")
    factor = counts["activation_factor"] * (HALF_PRECISION_ACTIVATIONS if half else 1.0)
    batch, max_len = cfg.train.batch_size, cfg.data.max_len
    hidden, layers = counts["hidden"], counts["layers"]
    parts = {
        "frozen_weights": counts["params"] * WEIGHT_BYTES / MIB,
        "trainable": counts["trainable"] * TRAINABLE_BYTES / MIB,
        "activations": batch * max_len * hidden * layers * factor / MIB,
        "cuda_context": float(CUDA_CONTEXT_MB),
    }
    weights = "fp32" if not half else f"fp32 weights, {precision} autocast"
    halved = f" × {HALF_PRECISION_ACTIVATIONS:g} ({precision} autocast)" if half else ""
    details = {
        "frozen_weights": f"{counts['params']:,} params × {WEIGHT_BYTES} bytes ({weights})",
        "trainable": f"{counts['trainable']:,} {_trainable_parts(counts)} params × {TRAINABLE_BYTES} bytes "
        "(fp32 weights, grads, AdamW m and v)",
        "activations": f"batch {batch} × max_len {max_len} × hidden {hidden} × {layers} layers × "
        f"{counts['activation_factor']:g} bytes{halved} ({counts['backbone']})",
        "cuda_context": "constant (driver, kernels)",
    }
    total = math.ceil(sum(parts.values()))
    return MemoryEstimate(
        exp_id=cfg.exp_id,
        total_mb=total,
        source="formula",
        parts=parts,
        details=details,
        params=counts["params"],
        trainable_params=counts["trainable"],
        formula_mb=total,
        precision=precision,
    )


def count_parameters(cfg: ExperimentConfig, plugins: Plugins) -> dict[str, Any]:
    """Encoder and trainable parameter counts, hidden size, layers and the backbone's activation factor.

    The model plan is the one training builds (:mod:`lorakit.modeling.plan`); the tuning method and each
    head count their own parameters (:class:`lorakit.specs.TuningMethodSpec`, ``TaskHeadSpec``)."""
    import torch
    import transformers

    from ..modeling.plan import config_label_counts, load_model_config, plan_model

    hf_config = load_model_config(cfg.model.arch)
    plan = plan_model(cfg, config_label_counts(cfg), plugins, hf_config=hf_config, check_names=False)
    # the meta device allocates nothing: shapes only, whatever the model's size
    with torch.device("meta"):
        encoder = transformers.AutoModel.from_config(hf_config)
    params = sum(p.numel() for p in encoder.parameters())
    hidden = int(hf_config.hidden_size)
    assert plan.backbone_spec is not None
    methods = method_parameters(plan, encoder)
    heads = sum(_head_params(t, hidden) for t in plan.tasks)
    return {
        "params": params,
        "trainable": sum(methods.values()) + heads,
        "methods": methods,
        "heads": heads,
        "hidden": hidden,
        "layers": int(getattr(hf_config, "num_hidden_layers", 12)),
        "activation_factor": plan.backbone_spec.activation_factor,
        "backbone": plan.backbone,
    }


def _trainable_parts(counts: dict[str, Any]) -> str:
    """``LoRA + head`` for the default method as before; a combination's parts with their counts."""
    methods = counts.get("methods") or {}
    if list(methods) == [DEFAULT_METHOD]:
        return "LoRA + head"
    parts = [f"{name} {n:,}" for name, n in methods.items()] + [f"heads {counts.get('heads', 0):,}"]
    return f"trainable ({' + '.join(parts)})"


def method_parameters(plan: ModelPlan, encoder: Any) -> dict[str, int]:
    """Each tuning method's added parameters: its own ``trainable_parameters`` over the Linear layers it
    targets (as peft matches names, or as the method's ``select_layers`` names them)."""
    import torch

    from ..modeling.plan import with_detected_targets

    linears = {
        name: (name, module.in_features, module.out_features)
        for name, module in encoder.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    counts = {}
    for part in with_detected_targets(plan, encoder).parts:
        if part.spec.select_layers is not None and not part.target_modules:
            chosen = [linears[n] for n in part.spec.select_layers(encoder, part.options) if n in linears]
        else:
            targets = part.target_modules or []
            chosen = [
                layer
                for name, layer in linears.items()
                if any(name == t or name.endswith(f".{t}") for t in targets)
            ]
        count = part.spec.trainable_parameters
        counts[part.name] = int(count(chosen, part.options)) if count is not None else 0
    return counts


def _head_params(task: TaskPlan, hidden: int) -> int:
    count = task.head_spec.trainable_parameters
    if count is not None:
        return int(count(hidden, task.num_labels, dict(task.head_options)))
    return hidden * task.num_labels + task.num_labels  # one linear layer
