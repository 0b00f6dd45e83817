"""One experiment, start to finish: checks, data, model, loop, artifacts, snapshots, index.

Every user-fixable problem (config, data, plugins, an existing folder) is found *before* the output
folder is touched, so a failed start leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import attrs

from ..config.render import to_toml
from ..config.schema import ExperimentConfig, to_dict
from ..errors import ResumeError
from ..fsutil import read_json, write_json_atomic, write_text_atomic
from ..plugins import Plugins
from ..runs.layout import RunLayout
from .envinfo import env_info, env_version, package_versions, peak_memory_mb

log = logging.getLogger("lorakit.train")

# Keys that do not change what is trained: a resume may differ in them.
NON_RESULT_KEYS = ("description", "resources", "train.checkpoint_every_steps", "train.device")


@attrs.define(kw_only=True, frozen=True)
class RunResult:
    """What ``Experiment.run()`` returns."""

    exp_id: str
    output_dir: Path
    status: str
    metrics: dict[str, Any]
    best: dict[str, Any]
    data_cache_hit: bool


def config_fingerprint(cfg: ExperimentConfig) -> str:
    data = to_dict(cfg)
    for key in NON_RESULT_KEYS:
        head, _, tail = key.partition(".")
        if tail:
            data.get(head, {}).pop(tail, None)
        else:
            data.pop(head, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _sync_index(layout: RunLayout) -> None:
    from ..runs.index import ExperimentIndex

    ExperimentIndex(layout.root.parent).sync(layout.exp_id)


class _LogToFile:
    """Attach train.log (and plain stderr lines) to the ``lorakit.train`` logger for one run."""

    def __init__(self, path: Path, echo: bool):
        self.handlers: list[logging.Handler] = [logging.FileHandler(path, encoding="utf-8")]
        if echo:
            self.handlers.append(logging.StreamHandler())
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        for handler in self.handlers:
            handler.setFormatter(fmt)

    def __enter__(self) -> _LogToFile:
        for handler in self.handlers:
            log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        return self

    def __exit__(self, *exc: Any) -> None:
        for handler in self.handlers:
            log.removeHandler(handler)
            handler.close()


def check_folder(layout: RunLayout, cfg_fp: str, *, resume: bool, force: bool) -> bool:
    """Decide what to do with an existing folder; True when a resume should load a checkpoint."""
    if not layout.root.exists():
        return False
    info = read_json(layout.run_info) if layout.run_info.is_file() else None
    if force:
        return False
    if info is None:
        if any(layout.root.iterdir()):
            raise ResumeError(
                f"{layout.root} exists and is not a lorakit experiment; use --force to replace it"
            )
        return False
    status = info.get("status")
    if not resume:
        if status == "completed":
            raise ResumeError(f"{layout.root} holds a completed experiment; use --force to train it again")
        raise ResumeError(
            f"{layout.root} holds an unfinished run ({status}); use --resume to continue or --force"
        )
    if status == "completed":
        raise ResumeError(f"{layout.root} is already completed; nothing to resume (use --force to retrain)")
    if info.get("config_fingerprint") != cfg_fp:
        raise ResumeError(
            f"{layout.root}: the config changed since this run started; resume refused (use --force to start over)"
        )
    return True


def run_experiment(
    cfg: ExperimentConfig,
    *,
    config_path: str | None,
    plugins: Plugins,
    outputs: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    echo: bool = True,
) -> RunResult:
    from ..data import prepare_data

    layout = RunLayout.for_exp(cfg.exp_id, outputs)
    cfg_fp = config_fingerprint(cfg)
    # In a distributed run (torchrun sets RANK) rank 0 alone checks and writes the folder.
    main = int(os.environ.get("RANK", "0")) == 0
    resuming = check_folder(layout, cfg_fp, resume=resume, force=force) if main else resume

    # --- everything that can fail on user input happens before the folder is touched ---------------
    from ..modeling.build import (
        build_classifier,
        build_losses,
        check_heads_and_losses,
        load_backbone_encoder,
        plan_model,
    )

    backbone, encoder = load_backbone_encoder(cfg, plugins)
    tokenizer_cache: dict[str, Any] = {}

    def tokenizer() -> Any:
        if "tok" not in tokenizer_cache:
            tokenizer_cache["tok"] = backbone.load_tokenizer(cfg.model.arch)
        return tokenizer_cache["tok"]

    data = prepare_data(cfg, tokenizer_loader=tokenizer, plugins=plugins)
    label_counts = {t.name: len(t.labels) for t in data.label_map.tasks}
    plan = plan_model(cfg, label_counts, plugins, encoder)
    combiner = build_losses(cfg, plan, plugins)
    classifier = build_classifier(plan, encoder, plugins, cfg.seed)
    check_heads_and_losses(plan, classifier, combiner, encoder.config.hidden_size)
    fingerprints = {"config": cfg_fp, "data": data.fingerprint}
    if resuming and main and read_json(layout.run_info).get("data_fingerprint") != data.fingerprint:
        raise ResumeError(
            f"{layout.root}: the data changed since this run started; resume refused (use --force)"
        )

    # --- the folder ---------------------------------------------------------------------------------
    run_info: dict[str, Any] = {}
    if main:
        run_info = _open_folder(
            layout, cfg, config_path, data, plan, fingerprints, resuming=resuming, force=force
        )

    from .loop import NonFiniteLoss, RunStopped, TrainingLoop

    pad_id = tokenizer().pad_token_id
    with _LogToFile(layout.train_log, echo) if main else contextlib.nullcontext():

        def on_epoch(epoch: int, metrics: dict[str, float], state: Any) -> None:
            doc: dict[str, Any] = dict(state.history)
            if state.best_epoch is not None:
                doc["best"] = {"epoch": state.best_epoch, **state.history[f"epoch_{state.best_epoch}"]}
            write_json_atomic(layout.metrics, doc)
            _sync_index(layout)
            plugins.on_epoch_end(exp_id=cfg.exp_id, epoch=epoch, metrics=metrics)

        def on_best(model: Any, state: Any) -> None:
            from ..modeling.artifacts import save_artifacts

            extra = {
                "labels": data.label_map.to_json()["tasks"],
                "max_len": cfg.data.max_len,
                "text_column": cfg.data.text_column,
            }
            save_artifacts(layout, model, plan.to_json(), extra)

        loop = TrainingLoop(
            cfg,
            plugins=plugins,
            layout=layout,
            classifier=classifier,
            combiner=combiner,
            data=data,
            plan=plan,
            pad_id=pad_id,
            fingerprints=fingerprints,
            on_epoch=on_epoch,
            on_best=on_best,
        )
        if main:
            run_info.update(device_used=_device_used(loop.device), world_size=loop.world_size)
            write_json_atomic(layout.run_info, run_info)
            write_json_atomic(layout.env_info, env_info(loop.device, _plugin_versions(plugins)))
            _sync_index(layout)
            plugins.on_run_start(exp_id=cfg.exp_id, config=to_dict(cfg), output_dir=str(layout.root))
        if resuming and not loop.resume():
            log.info("no checkpoint found: starting from the beginning")
        log.info(
            "%s: %d train / %d val rows, tasks %s, %s on %s x%d (data cache %s)",
            cfg.exp_id,
            len(data.splits["train"]),
            len(data.splits["val"]),
            [t.name for t in plan.tasks],
            plan.backbone,
            _device_used(loop.device),
            loop.world_size,
            "hit" if data.hit else "miss",
        )
        try:
            state = loop.run()
        except RunStopped as stop:
            if main:
                _finish(layout, run_info, loop, plugins, cfg, "preempted", stop.signal_name)
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if main:
                reason = str(exc) if isinstance(exc, NonFiniteLoss) else f"{type(exc).__name__}: {exc}"
                _finish(layout, run_info, loop, plugins, cfg, "failed", reason)
            raise
        steps = loop.steps_per_rank()
        if not main:
            return RunResult(
                exp_id=cfg.exp_id,
                output_dir=layout.root,
                status="completed",
                metrics={},
                best={},
                data_cache_hit=data.hit,
            )
        run_info["steps_per_rank"] = steps
        # The best epoch's weights are on disk; bring them back so the test split and the check use them.
        metrics_doc = read_json(layout.metrics)
        if "test" in data.splits:
            _restore_best(layout, loop)
            metrics_doc["test"] = loop.evaluate("test")
            write_json_atomic(layout.metrics, metrics_doc)
        _verify_reload(layout, loop, data, plugins, layout.adapter_dir)
        _finish(layout, run_info, loop, plugins, cfg, "completed", None)
        shutil.rmtree(layout.checkpoints, ignore_errors=True)
        log.info(
            "%s completed: best epoch %s, %s %.4f",
            cfg.exp_id,
            state.best_epoch,
            loop.metric,
            state.best_value,
        )
    return RunResult(
        exp_id=cfg.exp_id,
        output_dir=layout.root,
        status="completed",
        metrics=metrics_doc,
        best=metrics_doc.get("best", {}),
        data_cache_hit=data.hit,
    )


def _open_folder(
    layout: RunLayout,
    cfg: ExperimentConfig,
    config_path: str | None,
    data: Any,
    plan: Any,
    fingerprints: dict[str, str],
    *,
    resuming: bool,
    force: bool,
) -> dict[str, Any]:
    """Create (or, with --force, replace) the experiment folder and write what is known before training."""
    if force and layout.root.exists():
        trash = layout.root.with_name(f".{layout.exp_id}.deleted-{uuid.uuid4().hex[:8]}")
        layout.root.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    layout.root.mkdir(parents=True, exist_ok=True)
    if resuming:
        run_info = read_json(layout.run_info)
    else:
        run_info = _initial_run_info(cfg, config_path, data, plan, fingerprints)
        _write_readonly(layout.config_copy, config_copy_text(cfg, config_path))
        write_json_atomic(layout.label_map, data.label_map.to_json())
    run_info.update(status="running", error=None, end_time=None)
    return run_info


def config_copy_text(cfg: ExperimentConfig, config_path: str | None) -> str:
    """The merged config, runnable as it stands: base_config is recorded in a comment, not followed."""
    data = to_dict(cfg)
    base = data.pop("base_config", None)
    header = [f"# Frozen copy of {config_path or 'a config dict'}, fully merged (lorakit {_version()})."]
    if base:
        header.append(
            f"# It inherited from base_config = {base!r}; every inherited value is written out below."
        )
    return "\n".join(header) + "\n" + to_toml(data)


def _version() -> str:
    from .. import __version__

    return __version__


def _write_readonly(path: Path, text: str) -> None:
    if path.exists():
        path.chmod(0o644)
    write_text_atomic(path, text)
    path.chmod(0o444)


def _device_used(device: Any) -> str:
    return f"GPU-{device.index or 0}" if device.type == "cuda" else "cpu"


def _plugin_versions(plugins: Plugins) -> dict[str, str]:
    return {
        info.name: f"{info.distribution or '?'} {info.version or ''}".strip() for info in plugins.pm.infos()
    }


def _initial_run_info(
    cfg: ExperimentConfig, config_path: str | None, data: Any, plan: Any, fps: dict
) -> dict:
    from ..config.render import short_source

    return {
        "exp_id": cfg.exp_id,
        "status": "running",
        "create_time": now(),
        "end_time": None,
        "task_type": cfg.derived_task_type,
        "tasks": {t.name: list(t.labels) for t in data.label_map.tasks},
        "base_config": cfg.base_config,
        "config_path": config_path,
        "config_display": short_source(config_path) if config_path else None,
        "key_params": {
            "model": cfg.model.arch,
            "backbone": plan.backbone,
            "method": cfg.model.method,
            "lora_rank": cfg.model.lora.rank,
            "lora_alpha": cfg.model.lora.alpha,
            "lr": cfg.train.lr,
            "batch_size": cfg.train.batch_size,
            "epochs": cfg.train.epochs,
            "max_len": cfg.data.max_len,
            "loss_weight": cfg.train.loss_weight,
        },
        "headline_metric": cfg.train.save_strategy.removeprefix("best_")
        if cfg.train.save_strategy != "last"
        else "avg_f1",
        "device_used": None,
        "env_version": env_version(package_versions()),
        "error": None,
        "notes": [],
        "config_fingerprint": fps["config"],
        "data_fingerprint": fps["data"],
        "data_stats": data.stats,
    }


def _finish(
    layout: RunLayout,
    run_info: dict,
    loop: Any,
    plugins: Plugins,
    cfg: ExperimentConfig,
    status: str,
    error: str | None,
) -> None:
    run_info.update(status=status, end_time=now(), error=error)
    memory = peak_memory_mb(loop.device)
    run_info.update(memory)
    write_json_atomic(layout.run_info, run_info)
    env = read_json(layout.env_info) if layout.env_info.is_file() else {}
    env.update(memory)
    write_json_atomic(layout.env_info, env)
    _sync_index(layout)
    metrics = read_json(layout.metrics) if layout.metrics.is_file() else {}
    plugins.on_run_end(exp_id=cfg.exp_id, status=status, metrics=metrics, output_dir=str(layout.root))


def _restore_best(layout: RunLayout, loop: Any) -> None:
    """Load the saved best adapter and heads back into the live model, through peft's own key mapping."""
    import peft
    from safetensors.torch import load_file

    from ..modeling.artifacts import load_heads

    model = loop.accelerator.unwrap_model(loop.classifier)
    peft.set_peft_model_state_dict(
        model.encoder, load_file(str(layout.adapter_dir / "adapter_model.safetensors"))
    )
    load_heads(model, layout)


def _verify_reload(layout: RunLayout, loop: Any, data: Any, plugins: Plugins, best_dir: Path) -> None:
    """Reload what was saved, with plain peft, and check it gives the logits of the trained model."""
    import torch

    from ..modeling.artifacts import load_artifacts
    from .batching import collate

    _restore_best(layout, loop)
    split = data.splits["val"]
    n = min(len(split), 16)
    if n == 0:
        return
    import numpy as np

    batch = collate(split, np.arange(n), loop.pad_id)
    trained = loop.accelerator.unwrap_model(loop.classifier).eval()
    reloaded = load_artifacts(layout, plugins, device=str(loop.device)).classifier
    with torch.no_grad():
        ids, mask = batch["input_ids"].to(loop.device), batch["attention_mask"].to(loop.device)
        for a, b in zip(trained(ids, mask), reloaded(ids, mask), strict=False):
            if not torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4):
                raise RuntimeError(
                    f"{layout.adapter_dir}: reloaded model's logits differ from the trained model's"
                )
    log.info("reloaded %s with plain peft: logits match", best_dir)
