"""``lorakit reproduce``: retrain an experiment from its frozen config into a new folder and compare.

The data must still be what the original trained on (the recorded data fingerprint; the file that changed
is named), the environment is compared with the original's ``requirements.lock`` (a difference is a
warning), and each epoch's metrics are put side by side with the original's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs

from .errors import LorakitError
from .runs.layout import RunLayout, exp_id_problem

#: metrics that measure the machine, not the model: never compared
NOT_COMPARED = ("epoch_seconds",)


class DataChanged(LorakitError):
    """The data no longer matches the original run's fingerprint."""


@attrs.define(kw_only=True)
class Comparison:
    original: str
    reproduced: str
    rows: list[tuple[str, str, float, float | None]]  # (epoch, metric, original, reproduced)
    tolerance: float
    environment: list[str]

    @property
    def agrees(self) -> bool:
        return all(new is not None and abs(new - old) <= self.tolerance for _, _, old, new in self.rows)


def next_id(layout: RunLayout) -> str:
    """``<exp_id>.repro<N>``, the first N whose folder does not exist."""
    n = 1
    while (layout.root.parent / f"{layout.exp_id}.repro{n}").exists():
        n += 1
    return f"{layout.exp_id}.repro{n}"


def check_data(layout: RunLayout, cfg: Any) -> None:
    """Refuse (naming the file) when the data's fingerprint is not the one the original run recorded."""
    from .data.fingerprint import fingerprint_inputs, fingerprint_key

    run = layout.read_run()
    inputs = fingerprint_inputs(cfg)
    if not run.data_fingerprint or fingerprint_key(inputs) == run.data_fingerprint:
        return
    recorded = (run.data_stats or {}).get("files") or {}
    current = inputs["files"]
    changed = [
        f"{info.get('path')} (sha256 {str(info.get('sha256'))[:12]} -> {str((current.get(role) or {}).get('sha256'))[:12]})"
        for role, info in recorded.items()
        if isinstance(info, dict) and (current.get(role) or {}).get("sha256") != info.get("sha256")
    ]
    what = ", ".join(changed) if changed else "its data files or data settings"
    raise DataChanged(
        f"{layout.exp_id}: the data no longer matches what it trained on: {what} changed; nothing was trained"
    )


def model_lines(layout: RunLayout, cfg: Any) -> list[str]:
    """A warning line when the model's files are not the ones the original trained from (run.json
    ``references``; runs before them record no hash and are not checked)."""
    from .config.references import content_sha256

    recorded = ((layout.read_run().references or {}).get("model.arch") or {}).get("sha256")
    if not recorded:
        return []
    now = content_sha256(cfg.model.arch)
    if now == recorded:
        return []
    return [
        f"model.arch {cfg.model.arch}: not the files it trained from (sha256 {recorded[:12]} -> {str(now)[:12]})"
    ]


def environment_lines(layout: RunLayout) -> list[str]:
    """What differs between the original's environment and this one (empty without a lock)."""
    from . import readback
    from .runs import environment

    if not layout.requirements_lock.is_file():
        return []
    return environment.diff(
        environment.parse_lock(readback.read_text(layout.requirements_lock)), environment.current()
    )


def compare(
    original: RunLayout, reproduced: RunLayout, tolerance: float, env: list[str], *, epochs: int | None = None
) -> Comparison:
    """Each epoch's metrics of the original against the reproduction (the first ``epochs`` when given)."""
    old, new = original.read_metrics(), reproduced.read_metrics()
    rows = []
    numbered = {int(k[6:]): k for k in old if k.startswith("epoch_") and k[6:].isdigit()}
    for epoch in [numbered[n] for n in sorted(numbered) if epochs is None or n <= epochs]:
        for metric, value in old[epoch].items():
            if metric in NOT_COMPARED or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            got = (new.get(epoch) or {}).get(metric)
            rows.append((epoch, metric, float(value), float(got) if isinstance(got, (int, float)) else None))
    return Comparison(
        original=original.exp_id,
        reproduced=reproduced.exp_id,
        rows=rows,
        tolerance=tolerance,
        environment=env,
    )


def table(result: Comparison) -> str:
    from tabulate import tabulate

    body = [
        (epoch, metric, f"{old:.6f}", "missing" if new is None else f"{new:.6f}",
         "" if new is None else f"{new - old:+.2e}" if not math.isclose(new, old, abs_tol=0) else "0")
        for epoch, metric, old, new in result.rows
    ]  # fmt: skip
    return tabulate(body, headers=["epoch", "metric", result.original, result.reproduced, "difference"])


def reproduce(
    exp: str,
    *,
    as_id: str | None,
    outputs: str | Path | None,
    tolerance: float | None,
    echo: bool,
    epochs_only: int | None = None,
) -> Comparison:
    """Retrain ``exp`` from its frozen config as ``as_id`` (default ``<exp>.repro<N>``) and compare; with
    ``epochs_only=K``, only the first K epochs (the schedule stays the full run's, so they match)."""
    from .config.schema import load_config
    from .experiment import Experiment, resolve_experiment

    layout = resolve_experiment(exp, outputs)
    if not layout.config_copy.is_file():
        raise LorakitError(f"{layout.root}: no config_copy.toml to reproduce from")
    new_id = as_id or next_id(layout)
    problem = exp_id_problem(new_id)
    if problem:
        raise LorakitError(f"--as: {problem}")
    if (layout.root.parent / new_id).exists():
        raise LorakitError(f"{layout.root.parent / new_id}: already exists; choose another --as")
    overrides = [f'exp_id="{new_id}"']
    cfg, _ = load_config(layout.config_copy, overrides)
    check_data(layout, cfg)
    env = model_lines(layout, cfg) + environment_lines(layout)
    experiment = Experiment(layout.config_copy, overrides, outputs=layout.root.parent)
    new_layout = RunLayout(layout.root.parent / new_id)
    try:
        experiment.run(echo=echo, stop_after_epochs=epochs_only)
    finally:
        if new_layout.run_info.is_file():
            run = new_layout.read_run()
            run.reproduces = layout.exp_id
            if epochs_only is not None and epochs_only < cfg.train.epochs:
                run.notes = [*(run.notes or []), f"stopped after epoch {epochs_only} of {cfg.train.epochs}"]
            new_layout.write_run(run)
    if tolerance is None:
        tolerance = 0.0 if cfg.train.device in ("auto", "cpu") and not _has_cuda() else 1e-2
    return compare(layout, new_layout, tolerance, env, epochs=epochs_only)


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())
