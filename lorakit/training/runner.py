"""One experiment, start to finish: checks, data, model, loop, artifacts, snapshots, index.

Every user-fixable problem (config, data, plugins, an existing folder) is found *before* the output
folder is touched, so a failed start leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ..config.render import to_toml
from ..config.schema import ExperimentConfig, to_dict
from ..conventions import headline_metric
from ..errors import ResumeError
from ..fsutil import read_json, write_json_atomic, write_text_atomic
from ..plugins import Plugins
from ..runs.layout import RunLayout
from ..runs.record import RunInfo
from .distributed import is_main_rank
from .envinfo import env_info, env_version, package_versions, peak_memory_mb

log = logging.getLogger("lorakit.train")

# Keys that do not change what is trained: a resume may differ in them.
NON_RESULT_KEYS = (
    "description",
    "sweep",
    "resources",
    "train.checkpoint_every_steps",
    "train.device",
    "train.tensorboard",
)
# Keys added after runs were started, at the default that behaves as before they existed: left out of the
# fingerprint, so upgrading lorakit does not refuse to resume a run that was going.
ADDED_KEYS = {"data.missing_labels": "error"}


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
    """What ``--resume`` compares: the config without the keys that do not change what is trained, and
    without the option tables of tuning methods it does not use (installing a plugin that brings a table
    must not make every run "changed")."""
    data = _result_keys(cfg)
    used = set(cfg.model.methods)
    for name in [n for n in cfg.model.tuning if n not in used]:
        data.get("model", {}).pop(name, None)
    return _digest(data)


def legacy_fingerprints(cfg: ExperimentConfig, plugins: Plugins) -> set[str]:
    """The fingerprints lorakit 0.1 wrote for the same config, which kept every registered method's
    table: with the tables registered now, and with the built-in ones alone (the run started before a
    plugin package was installed). A run started then resumes."""
    from ..data.fingerprint import CORE_DISTRIBUTION

    data = _result_keys(cfg)
    registry = plugins.tuning_methods()
    core = copy.deepcopy(data)
    for name in cfg.model.tuning:
        if name in registry and registry.source(name).distribution != CORE_DISTRIBUTION:
            core.get("model", {}).pop(name, None)
    return {_digest(data), _digest(core)}


def _result_keys(cfg: ExperimentConfig) -> dict[str, Any]:
    data = to_dict(cfg)
    for key in NON_RESULT_KEYS:
        head, _, tail = key.partition(".")
        if tail:
            data.get(head, {}).pop(tail, None)
        else:
            data.pop(head, None)
    for key, default in ADDED_KEYS.items():
        head, _, tail = key.partition(".")
        if data.get(head, {}).get(tail) == default:
            data[head].pop(tail)
    return data


def _digest(data: dict[str, Any]) -> str:
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


def check_folder(
    layout: RunLayout, cfg_fp: str, *, resume: bool, force: bool, legacy: Iterable[str] = ()
) -> bool:
    """Decide what to do with an existing folder; True when a resume should load a checkpoint (``legacy``:
    fingerprints an earlier lorakit wrote for the same config)."""
    root = layout.root
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        kind = "a symbolic link" if root.is_symlink() else "a file"
        raise ResumeError(
            f"{root} is {kind}, not an experiment folder; move it away or choose another exp_id"
        )
    if not root.exists():
        return False
    if force:
        # --force replaces an experiment folder (or an empty one), never anything else a user keeps there
        if any(root.iterdir()) and not (layout.run_info.exists() or layout.config_copy.exists()):
            raise ResumeError(
                f"{root} exists and is not a lorakit experiment (no run.json); --force replaces only "
                "experiment folders: move it away or choose another exp_id"
            )
        return False
    layout.require_run()  # experiment files without run.json: damaged, not "not an experiment"
    info = layout.read_run_if_any()
    if info is None:
        if any(root.iterdir()):
            raise ResumeError(
                f"{root} exists and is not a lorakit experiment (no run.json); move it away or choose "
                "another exp_id"
            )
        return False
    status = info.status
    if not resume:
        if status == "completed":
            raise ResumeError(f"{root} holds a completed experiment; use --force to train it again")
        raise ResumeError(f"{root} holds an unfinished run ({status}); use --resume to continue or --force")
    if status == "completed":
        raise ResumeError(f"{root} is already completed; nothing to resume (use --force to retrain)")
    if info.config_fingerprint != cfg_fp and info.config_fingerprint not in set(legacy):
        raise ResumeError(
            f"{root}: the config changed since this run started; resume refused (use --force to start over)"
        )
    layout.check_files()  # a resume rewrites metrics.json and run.json: never over a damaged one
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
    written: Mapping[str, tuple[str, str]] | None = None,
    stop_after_epochs: int | None = None,
) -> RunResult:
    """Train one experiment (``written``: the config's model and data references as written, from
    :attr:`~lorakit.config.loader.RawConfig.written`, kept by config_copy.toml; ``stop_after_epochs``: end
    the run after that epoch, on the full run's learning-rate schedule, as ``reproduce --epochs-only`` does). Stop signals are caught from the first line on: one that arrives while the
    model loads or the data is tokenized stops the run before its first step, as preempted."""
    from .loop import SignalCatcher

    signals = SignalCatcher()
    # one run per experiment folder (rank 0 holds it for the ranks of a distributed run)
    with signals, run_lock(cfg.exp_id, outputs) if is_main_rank() else contextlib.nullcontext():
        return _run(
            cfg,
            config_path,
            plugins,
            outputs,
            resume=resume,
            force=force,
            echo=echo,
            signals=signals,
            written=written or {},
            stop_after_epochs=stop_after_epochs,
        )


class RunInProgress(ResumeError):
    """Another process is training this experiment."""


def run_lock(exp_id: str, outputs: str | Path | None) -> Any:
    """An exclusive lock on ``<outputs>/.locks/<exp_id>.lock`` for the whole run: beside the folder, not in
    it, since ``--force`` replaces the folder. A lock left by a dead process is simply taken over."""
    from ..pidlock import PidLock

    layout = RunLayout.for_exp(exp_id, outputs)

    def busy(pid: int | None) -> Exception:
        holder = f"process {pid}" if pid else "another process"
        return RunInProgress(f"{layout.root}: {holder} is training this experiment; wait for it or stop it")

    return PidLock(layout.root.parent / ".locks" / f"{exp_id}.lock", busy, own_folder=True)


@attrs.define(kw_only=True)
class _Setup:
    """What a run builds before its folder is touched."""

    data: Any
    plan: Any
    classifier: Any
    combiner: Any
    pad_id: int
    fingerprints: dict[str, str]


def _setup(cfg: ExperimentConfig, plugins: Plugins, layout: RunLayout, cfg_fp: str, *, check: bool) -> _Setup:
    """Everything that can fail on user input: model, tokenizer, data, plan, heads and losses."""
    from ..data import prepare_data
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
    if check and layout.read_run().data_fingerprint != data.fingerprint:
        raise ResumeError(
            f"{layout.root}: the data changed since this run started; resume refused (use --force)"
        )
    return _Setup(
        data=data,
        plan=plan,
        classifier=classifier,
        combiner=combiner,
        pad_id=tokenizer().pad_token_id,
        fingerprints={"config": cfg_fp, "data": data.fingerprint},
    )


def _check_checkpoint(layout: RunLayout) -> None:
    """A resume that the newest checkpoint cannot serve is refused before the folder is touched."""
    from .checkpoint import STATE_FILE, check_world_size, latest_checkpoint

    path = latest_checkpoint(layout.checkpoints)
    if path is not None:
        saved = read_json(path / STATE_FILE).get("world_size", 1)
        check_world_size(path, saved, int(os.environ.get("WORLD_SIZE", "1")))


def _run(
    cfg: ExperimentConfig,
    config_path: str | None,
    plugins: Plugins,
    outputs: str | Path | None,
    *,
    resume: bool,
    force: bool,
    echo: bool,
    signals: Any,
    written: Mapping[str, tuple[str, str]],
    stop_after_epochs: int | None,
) -> RunResult:
    layout = RunLayout.for_exp(cfg.exp_id, outputs)
    cfg_fp = config_fingerprint(cfg)
    # In a distributed run rank 0 alone checks and writes the folder.
    main = is_main_rank()
    legacy = legacy_fingerprints(cfg, plugins) if resume else set()
    resuming = check_folder(layout, cfg_fp, resume=resume, force=force, legacy=legacy) if main else resume
    if resuming and main:
        _check_checkpoint(layout)
    setup = _setup(cfg, plugins, layout, cfg_fp, check=resuming and main)
    # a resumed run keeps the precision it started in (``auto`` is decided once, at the first start)
    run = layout.read_run() if resume and layout.run_info.is_file() else None
    pinned = run.precision if run is not None else None
    run_info = RunInfo()  # rank 0's record; the other ranks write none
    if main:
        run_info = _open_folder(
            layout, cfg, config_path, setup, resuming=resuming, force=force, written=written
        )
    with _LogToFile(layout.train_log, echo) if main else contextlib.nullcontext():
        return _train(
            cfg,
            plugins,
            layout,
            setup,
            run_info,
            resuming=resuming,
            precision=pinned,
            signals=signals,
            stop_after_epochs=stop_after_epochs,
            echo=echo,
        )


def _train(
    cfg: ExperimentConfig,
    plugins: Plugins,
    layout: RunLayout,
    setup: _Setup,
    run_info: RunInfo,
    *,
    resuming: bool,
    precision: str | None,
    signals: Any,
    stop_after_epochs: int | None = None,
    echo: bool = True,
) -> RunResult:
    """Build the loop, train, then (rank 0) score, check and record the run; a failure is recorded."""
    main = is_main_rank()
    loop = None
    try:
        loop = _build_loop(cfg, plugins, layout, setup, precision=precision, signals=signals)
        loop.stop_after_epochs = stop_after_epochs
        loop.echo = echo
        if main:
            _record_start(layout, run_info, loop, plugins, cfg)
        if resuming and not loop.resume():
            log.info("no checkpoint found: starting from the beginning")
        _log_start(cfg, setup, loop)
        start_step = loop.state.global_step
        state = loop.run()
        report = loop.rank_report()
        if not main:
            return _result(cfg, layout, setup, {})
        _record_ranks(run_info, report, loop)
        run_info.throughput = _throughput(loop, setup, run_info) or None
        # a resume that found training already over (it failed after training) saves the best
        # adapter again before checking it: what failed may have been that very file
        resave = resuming and loop.state.global_step == start_step
        metrics_doc = _after_training(layout, loop, setup.data, resave=resave)
    except BaseException as exc:
        if main:
            _record_failure(layout, run_info, loop, plugins, cfg, exc)
        raise
    _complete(layout, run_info, loop, plugins, cfg)
    log.info(
        "%s completed: best epoch %s, %s %.4f", cfg.exp_id, state.best_epoch, loop.metric, state.best_value
    )
    return _result(cfg, layout, setup, metrics_doc)


def _throughput(loop: Any, setup: _Setup, run_info: RunInfo) -> dict[str, Any]:
    """Tokens, tokens/s and MFU of the training epochs (the epoch times exclude evaluation)."""
    from .throughput import run_throughput

    epochs = [m for m in loop.state.history.values() if isinstance(m, dict)]
    seconds = [float(m["epoch_seconds"]) for m in epochs if isinstance(m.get("epoch_seconds"), (int, float))]
    model = loop.accelerator.unwrap_model(loop.classifier)
    return run_throughput(
        model_config=model.encoder.config,
        train_tokens=run_info.train_tokens or 0,
        train_rows=len(setup.data.splits["train"]),
        epochs=len(seconds),
        train_seconds=sum(seconds),
        trainable_params=sum(int(t.numel()) for t in loop.trainable().values()),
        precision=loop.precision,
        device=loop.device,
        world_size=loop.world_size,
    )


def _result(
    cfg: ExperimentConfig, layout: RunLayout, setup: _Setup, metrics_doc: dict[str, Any]
) -> RunResult:
    return RunResult(
        exp_id=cfg.exp_id,
        output_dir=layout.root,
        status="completed",
        metrics=metrics_doc,
        best=metrics_doc.get("best", {}),
        data_cache_hit=setup.data.hit,
    )


def _build_loop(
    cfg: ExperimentConfig, plugins: Plugins, layout: RunLayout, setup: _Setup, *, precision: Any, signals: Any
) -> Any:
    from .loop import TrainingLoop

    def on_epoch(epoch: int, metrics: dict[str, float], state: Any, reports: dict[str, Any]) -> None:
        doc: dict[str, Any] = dict(state.history)
        if state.best_epoch is not None:
            doc["best"] = {"epoch": state.best_epoch, **state.history[f"epoch_{state.best_epoch}"]}
        _write_reports(layout, f"epoch_{epoch}", reports, best_epoch=state.best_epoch)
        write_json_atomic(layout.metrics, doc)
        _sync_index(layout)
        plugins.on_epoch_end(exp_id=cfg.exp_id, epoch=epoch, metrics=metrics)

    def on_best(model: Any, state: Any) -> None:
        from ..modeling.artifacts import save_artifacts

        extra = {
            "labels": setup.data.label_map.to_json()["tasks"],
            "max_len": cfg.data.max_len,
            "text_column": cfg.data.text_column,
        }
        save_artifacts(layout, model, setup.plan, extra)

    return TrainingLoop(
        cfg,
        plugins=plugins,
        layout=layout,
        classifier=setup.classifier,
        combiner=setup.combiner,
        data=setup.data,
        plan=setup.plan,
        pad_id=setup.pad_id,
        fingerprints=setup.fingerprints,
        on_epoch=on_epoch,
        on_best=on_best,
        precision=precision,
        signals=signals,
    )


def _record_start(
    layout: RunLayout, run_info: RunInfo, loop: Any, plugins: Plugins, cfg: ExperimentConfig
) -> None:
    run_info.update(
        device_used=_device_used(loop.device),
        world_size=loop.world_size,
        precision=loop.precision,
        tf32=loop.tf32,
    )
    layout.write_run(run_info)
    from ..runs.environment import hardware, installed, lock_text

    facts = hardware()
    write_json_atomic(layout.env_info, env_info(loop.device, _plugin_versions(plugins), {"hardware": facts}))
    write_text_atomic(layout.requirements_lock, lock_text(installed(), facts))
    _sync_index(layout)
    plugins.on_run_start(exp_id=cfg.exp_id, config=to_dict(cfg), output_dir=str(layout.root))


def _log_start(cfg: ExperimentConfig, setup: _Setup, loop: Any) -> None:
    log.info(
        "%s: %d train / %d val rows, tasks %s, %s on %s x%d in %s (data cache %s)",
        cfg.exp_id,
        len(setup.data.splits["train"]),
        len(setup.data.splits["val"]),
        [t.name for t in setup.plan.tasks],
        setup.plan.backbone,
        _device_used(loop.device),
        loop.world_size,
        loop.precision,
        "hit" if setup.data.hit else "miss",
    )


def _record_ranks(run_info: RunInfo, report: list[dict[str, Any]], loop: Any) -> None:
    """Steps, peaks and weight checksums of every rank; ranks that drifted apart fail the run."""
    run_info.steps_per_rank = [r["steps"] for r in report]
    for key in ("peak_memory_mb", "peak_reserved_mb"):
        values = [r.get(key) for r in report]
        known = [v for v in values if v is not None]
        run_info.update(**{key: max(known) if known else None})
        if len(report) > 1:
            run_info.update(**{f"{key}_per_rank": values})
    run_info.skipped_steps = loop.state.skipped_steps
    checksums = {r["checksum"] for r in report if "checksum" in r}
    if len(checksums) > 1:
        raise RuntimeError(
            f"the ranks' trainable weights differ at the end of training (checksums {sorted(checksums)})"
        )


def _after_training(layout: RunLayout, loop: Any, data: Any, *, resave: bool) -> dict[str, Any]:
    """The best epoch's weights back in the live model, the test split scored, the saved adapter checked.

    Nothing here loads a second copy of the encoder: the saved adapter is loaded beside the trained one.
    """
    _restore_best(layout, loop)
    if resave:
        loop.on_best(loop.accelerator.unwrap_model(loop.classifier), loop.state)
    metrics_doc = read_json(layout.metrics)
    if "test" in data.splits:
        # rank 0 alone: the other ranks of a distributed run have finished
        metrics_doc["test"] = loop.evaluate("test", alone=True)
        _write_reports(layout, "test", loop.last_reports, best_epoch=None)
        write_json_atomic(layout.metrics, metrics_doc)
    _verify_reload(layout, loop, data)
    return metrics_doc


def _write_reports(layout: RunLayout, key: str, reports: dict[str, Any], *, best_epoch: int | None) -> None:
    """Add one evaluation's per-class reports to reports.json (the epochs before a resume stay), and point
    ``best`` at the best epoch's."""
    doc = layout.read_reports()
    doc[key] = {"tasks": reports}
    best = doc.get(f"epoch_{best_epoch}")
    if best is not None:
        doc["best"] = {"epoch": best_epoch, **best}
    write_json_atomic(layout.reports, doc)


def _complete(
    layout: RunLayout, run_info: RunInfo, loop: Any, plugins: Plugins, cfg: ExperimentConfig
) -> None:
    """Record the run as completed; a plugin's ``lorakit_on_run_end`` that raises makes it failed (the
    checkpoints stay, so ``--resume`` redoes only the work after training)."""
    try:
        _finish(layout, run_info, loop, plugins, cfg, "completed", None)
    except BaseException as exc:
        _record_failure(layout, run_info, loop, plugins, cfg, exc)
        raise
    shutil.rmtree(layout.checkpoints, ignore_errors=True)


def _record_failure(
    layout: RunLayout,
    run_info: RunInfo,
    loop: Any,
    plugins: Plugins,
    cfg: ExperimentConfig,
    exc: BaseException,
) -> None:
    from .loop import RunStopped

    if isinstance(exc, RunStopped):
        status, reason = "preempted", exc.signal_name
    else:
        status, reason = "failed", failure_reason(exc, layout.root)
    if status == "failed":
        _log_traceback(layout, exc)
    try:
        _finish(layout, run_info, loop, plugins, cfg, status, reason)
    except Exception as record_exc:  # a full disk may refuse the record too: the run's failure is the news
        if not layout.write_run_in_place(run_info):
            log.warning("could not record %s in %s: %s", status, layout.run_info, failure_reason(record_exc))


def _log_traceback(layout: RunLayout, exc: BaseException) -> None:
    """The failure's traceback goes to train.log (the terminal gets one line)."""
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with contextlib.suppress(OSError), open(layout.train_log, "a", encoding="utf-8") as fh:
        fh.write(f"{now()} ERROR run failed: {failure_reason(exc, layout.root)}\n{text}")


def failure_reason(exc: BaseException, where: Path | None = None) -> str:
    """One line: a fault of the machine as ``<path>: disk full (...)``, the message of lorakit's errors,
    else the error's type and message. ``where`` is the folder written to when the error names no path."""
    from ..errors import LorakitError, machine_problem

    machine = machine_problem(exc, where)
    if machine is not None:
        return machine
    text = str(exc) if isinstance(exc, LorakitError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def _open_folder(
    layout: RunLayout,
    cfg: ExperimentConfig,
    config_path: str | None,
    setup: _Setup,
    *,
    resuming: bool,
    force: bool,
    written: Mapping[str, tuple[str, str]],
) -> RunInfo:
    """Create (or, with --force, replace) the experiment folder and write what is known before training."""
    if force and layout.root.exists():
        trash = layout.root.with_name(f".{layout.exp_id}.deleted-{uuid.uuid4().hex[:8]}")
        layout.root.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    layout.root.mkdir(parents=True, exist_ok=True)
    if resuming:
        run_info = layout.read_run()
    else:
        references = _references(cfg, written, setup)
        run_info = _initial_run_info(cfg, config_path, setup, references)
        _write_readonly(
            layout.config_copy, config_copy_text(cfg, config_path, written, references, layout.root)
        )
        write_json_atomic(layout.label_map, setup.data.label_map.to_json())
    run_info.update(status="running", error=None, end_time=None)
    return run_info


def _references(
    cfg: ExperimentConfig, written: Mapping[str, tuple[str, str]], setup: _Setup
) -> dict[str, dict[str, Any]]:
    from ..config.references import reference_record

    hashes = {f["path"]: f.get("sha256") for f in setup.data.files.values() if f and f.get("path")}
    return reference_record(to_dict(cfg), written, hashes)


def config_copy_text(
    cfg: ExperimentConfig,
    config_path: str | None,
    written: Mapping[str, tuple[str, str]],
    references: Mapping[str, Mapping[str, Any]],
    folder: Path,
) -> str:
    """The merged config, runnable as it stands from ``folder``: base_config is recorded in a comment, not
    followed; model and data references are kept as written (``config.references``), resolved and hashed
    in the comments above them."""
    from ..config.references import make_portable, reference_comments

    data = to_dict(cfg)
    base = data.pop("base_config", None)
    make_portable(data, written, folder)
    header = [f"# Frozen copy of {config_path or 'a config dict'}, fully merged (lorakit {_version()})."]
    if base:
        header.append(
            f"# It inherited from base_config = {base!r}; every inherited value is written out below."
        )
    header += reference_comments(references)
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
    cfg: ExperimentConfig, config_path: str | None, setup: _Setup, references: dict[str, dict[str, Any]]
) -> RunInfo:
    from ..config.render import short_source
    from ..modeling.build import tuning_record

    data, plan, fps = setup.data, setup.plan, setup.fingerprints
    tuning = tuning_record(plan, setup.classifier)
    heads = sum(int(p.numel()) for p in setup.classifier.heads.parameters() if p.requires_grad)
    # a combination's parts, each by name, so that runs can be filtered and compared on them
    parts = {f"{t['method']}_params": t["trainable_params"] for t in tuning} if len(tuning) > 1 else {}

    return RunInfo(
        exp_id=cfg.exp_id,
        status="running",
        create_time=now(),
        end_time=None,
        task_type=cfg.derived_task_type,
        tasks={t.name: list(t.labels) for t in data.label_map.tasks},
        base_config=cfg.base_config,
        config_path=config_path,
        config_display=short_source(config_path) if config_path else None,
        key_params={
            "model": references.get("model.arch", {}).get("written", cfg.model.arch),
            "backbone": plan.backbone,
            "method": plan.method,
            "trainable_params": sum(t["trainable_params"] for t in tuning) + heads,
            **parts,
            "lora_rank": cfg.model.lora.rank,
            "lora_alpha": cfg.model.lora.alpha,
            # the tuning method's own rank (dora's, say), when its options table has one
            **({"rank": _method_rank(cfg)} if _method_rank(cfg) is not None else {}),
            "lr": cfg.train.lr,
            "batch_size": cfg.train.batch_size,
            "epochs": cfg.train.epochs,
            "max_len": cfg.data.max_len,
            "loss_weight": cfg.train.loss_weight,
        },
        headline_metric=headline_metric(cfg.train.save_strategy),
        device_used=None,
        precision=None,
        env_version=env_version(package_versions()),
        error=None,
        notes=[],
        config_fingerprint=fps["config"],
        data_fingerprint=fps["data"],
        # each input file's path and content hash: what `lorakit reproduce` names when the data changed
        data_stats={**data.stats, "files": data.files},
        # tokens of one training epoch (padding excluded): with epoch_seconds, the run's throughput
        train_tokens=int(data.splits["train"].lengths().sum()),
        tuning=tuning,
        references=references,
    )


def _method_rank(cfg: ExperimentConfig) -> int | None:
    rank = getattr(cfg.model.method_options, "rank", None)
    return int(rank) if isinstance(rank, int) else None


def _finish(
    layout: RunLayout,
    run_info: RunInfo,
    loop: Any,
    plugins: Plugins,
    cfg: ExperimentConfig,
    status: str,
    error: str | None,
) -> None:
    run_info.update(status=status, end_time=now(), error=error)
    memory: dict[str, Any] = {}
    if loop is not None:
        memory = peak_memory_mb(loop.device)
        for key, value in memory.items():
            # rank 0's peak now includes the work after training; a completed run has every rank's
            per_rank = getattr(run_info, f"{key}_per_rank")
            recorded = getattr(run_info, key)
            if per_rank and value is not None:
                per_rank[0] = max(per_rank[0] or 0, value)
                memory[key] = max(v for v in per_rank if v is not None)
            elif isinstance(recorded, (int, float)) and value is not None:
                memory[key] = max(value, recorded)
        run_info.update(**memory)
    layout.write_run(run_info)
    env = read_json(layout.env_info) if layout.env_info.is_file() else {}
    env.update(memory)
    write_json_atomic(layout.env_info, env)
    _sync_index(layout)
    metrics = read_json(layout.metrics) if layout.metrics.is_file() else {}
    plugins.on_run_end(exp_id=cfg.exp_id, status=status, metrics=metrics, output_dir=str(layout.root))


def _restore_best(layout: RunLayout, loop: Any) -> None:
    """Put the best epoch's weights back into the live model: as trained (kept beside the checkpoints),
    or, for a run resumed from an older lorakit, from the saved adapter through peft's key mapping."""
    from .checkpoint import BEST_FILE, load_best

    best = load_best(layout.checkpoints)
    if best is not None:
        loop.load_trainable(best, source=layout.checkpoints / BEST_FILE)
        return
    import peft
    from safetensors.torch import load_file

    from .. import readback
    from ..modeling.artifacts import load_heads

    model = loop.accelerator.unwrap_model(loop.classifier)
    readback.safetensors_header(layout.adapter_weights)
    peft.set_peft_model_state_dict(model.encoder, load_file(str(layout.adapter_weights)))
    load_heads(model, layout)


class ReloadMismatch(RuntimeError):
    """The saved adapter and heads do not reproduce the trained model's logits."""


def _verify_reload(layout: RunLayout, loop: Any, data: Any) -> None:
    """Load the saved weights *beside* the trained ones (no second encoder: peft's adapter as a second
    adapter, other methods' weights swapped in), run both in
    the run's own autocast on the same rows, and compare the logits with a tolerance fitted to the dtype."""
    import numpy as np
    import torch

    from ..modeling.artifacts import saved_adapter_active
    from .batching import collate, to_device
    from .precision import RELOAD_TOLERANCE

    split = data.splits["val"]
    n = min(len(split), 16)
    if n == 0:
        return
    batch = collate(split, np.arange(n), loop.pad_id)
    ids, mask = to_device(batch["input_ids"], loop.device), to_device(batch["attention_mask"], loop.device)
    model = loop.accelerator.unwrap_model(loop.classifier).eval()
    tolerance = RELOAD_TOLERANCE[loop.precision]
    with torch.no_grad(), loop.autocast():
        trained = [t.float() for t in model(ids, mask)]
        with saved_adapter_active(model, layout, loop.plan.parts):
            reloaded = [t.float() for t in model(ids, mask)]
    worst = max(float((a - b).abs().max()) for a, b in zip(trained, reloaded, strict=True))
    if not all(
        torch.allclose(a, b, atol=tolerance, rtol=tolerance) for a, b in zip(trained, reloaded, strict=True)
    ):
        raise ReloadMismatch(
            f"{layout.adapter_dir}: the saved adapter does not reproduce the trained model "
            f"(largest logit difference {worst:.3g}, tolerance {tolerance:g} in {loop.precision})"
        )
    log.info(
        "reloaded %s (%s) beside the trained model: logits match (largest difference %.2g, %s)",
        layout.adapter_dir,
        loop.plan.method,
        worst,
        loop.precision,
    )
