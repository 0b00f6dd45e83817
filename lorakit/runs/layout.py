"""Where everything of one experiment lives: ``outputs/<exp_id>/``, and the shape each file read back has.

The folder is the source of truth; the experiment index is a cache rebuilt from these files. Each file is
read back through :mod:`lorakit.readback` with the check below: a damaged one raises
:class:`~lorakit.errors.DamagedFile` (``<path>: damaged (<reason>)``), never a traceback further on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import attrs

from .. import readback as rb
from ..fsutil import dumps_json, write_json_atomic
from .record import RunInfo

OUTPUTS_ENV = "LORAKIT_OUTPUTS"
INDEX_FILE = "experiment_index.json"

STATUSES = ("running", "completed", "failed", "preempted")

MAX_EXP_ID = 128
# one path component: letters (any script), digits, and _ - . + = @ after the first character
_EXP_ID = re.compile(r"[^\W][\w.+=@-]*")


def exp_id_problem(exp_id: object) -> str | None:
    """Why ``exp_id`` cannot name an experiment folder, or None. An exp_id becomes a folder name and
    ``--force`` deletes that folder: an empty name, a path (``a/b``, ``/tmp/x``, ``..``) or a hidden name
    could reach the outputs folder itself or a folder outside it."""
    if not isinstance(exp_id, str) or not exp_id:
        return "must be a non-empty name"
    if len(exp_id) > MAX_EXP_ID:
        return f"must be at most {MAX_EXP_ID} characters, got {len(exp_id)}"
    if not _EXP_ID.fullmatch(exp_id):
        return (
            f"{exp_id!r} is not a folder name: use letters, digits and _ - . + = @, starting with a letter, "
            "a digit or _ (no path separators, no leading dot)"
        )
    return None


# ---- the shape of each file, as the trainer writes it ------------------------------------------------------
# Only the keys lorakit reads are checked, and only their types: a newer lorakit may add keys.

_TEXT = rb.optional(rb.STRING)
_LABEL = rb.kind(str, int, float)  # labels are strings; a numeric label column may give numbers
_LABELS = rb.list_of(_LABEL)

RUN_CHECK = rb.fields(
    {
        "exp_id": rb.STRING,
        "status": rb.one_of(*STATUSES),
        "create_time": _TEXT,
        "end_time": _TEXT,
        "task_type": _TEXT,
        "tasks": rb.optional(rb.dict_of(_LABELS)),
        "base_config": _TEXT,
        "config_path": _TEXT,
        "key_params": rb.optional(rb.OBJECT),
        "headline_metric": _TEXT,
        "device_used": _TEXT,
        "precision": _TEXT,
        "env_version": _TEXT,
        "error": _TEXT,
        "notes": rb.optional(rb.list_of(rb.STRING)),
        "config_fingerprint": _TEXT,
        "data_fingerprint": _TEXT,
        "world_size": rb.optional(rb.INTEGER),
        "peak_memory_mb": rb.optional(rb.NUMBER),
        "peak_reserved_mb": rb.optional(rb.NUMBER),
        "data_stats": rb.optional(rb.OBJECT),
        "reproduces": _TEXT,
        "references": rb.optional(
            rb.dict_of(rb.fields({"written": rb.STRING, "resolved": rb.STRING}, required=("written",)))
        ),
        "tuning": rb.optional(
            rb.list_of(rb.fields({"method": rb.STRING, "trainable_params": rb.INTEGER}, required=("method",)))
        ),
    },
    required=("status",),
)


_TASK_REPORT = rb.fields(
    {
        "labels": rb.list_of(rb.STRING),
        "confusion": rb.list_of(rb.list_of(rb.INTEGER)),
        "classes": rb.dict_of(rb.OBJECT),
    },
    required=("labels", "confusion", "classes"),
)
# reports.json: {"epoch_<n>" | "best" | "test": {"epoch"?: n, "tasks": {task: report}}}
REPORTS_CHECK = rb.dict_of(rb.fields({"tasks": rb.dict_of(_TASK_REPORT)}, required=("tasks",)))


def _metrics_check(value: object, where: str) -> str | None:
    """metrics.json: ``epoch_<n>``, ``best`` and ``test`` are objects of metrics; ``best.epoch`` names one."""
    problem = rb.OBJECT(value, where)
    if problem or not isinstance(value, dict):
        return problem
    for key, item in value.items():
        if key.startswith("epoch_") or key in ("best", "test"):
            problem = rb.OBJECT(item, key)
            if problem:
                return problem
    best = value.get("best")
    if isinstance(best, dict) and "epoch" in best:
        return rb.kind(int, str)(best["epoch"], "best.epoch")
    return None


METRICS_CHECK: rb.Check = _metrics_check


def _task_labels(value: object, where: str) -> str | None:
    """A task of label_map.json: ``{"labels": [...], "global_ids": [...]}`` (older files: the list alone)."""
    if isinstance(value, list):
        return _LABELS(value, where)
    return rb.fields({"labels": _LABELS}, required=("labels",))(value, where)


LABEL_MAP_CHECK = rb.fields({"task_type": _TEXT, "tasks": rb.optional(rb.dict_of(_task_labels))})
ENV_CHECK = rb.fields(
    {
        "python": _TEXT,
        "platform": _TEXT,
        "packages": rb.optional(rb.OBJECT),
        "plugins": rb.optional(rb.OBJECT),
        "device": _TEXT,
        "git_commit": _TEXT,
        "hardware": rb.optional(rb.OBJECT),
        "peak_memory_mb": rb.optional(rb.NUMBER),
        "peak_reserved_mb": rb.optional(rb.NUMBER),
    }
)
CONFIG_COPY_CHECK = rb.fields({"exp_id": rb.STRING})
HEADS_CHECK = rb.fields(
    {
        "arch": rb.STRING,
        "backbone": rb.STRING,
        "pooling": rb.STRING,
        "tasks": rb.list_of(
            rb.fields(
                {"name": rb.STRING, "num_labels": rb.INTEGER, "head": rb.STRING, "head_options": rb.OBJECT},
                required=("name", "num_labels", "head", "head_options"),
            )
        ),
        "labels": rb.dict_of(rb.fields({"labels": _LABELS}, required=("labels",))),
        "max_len": rb.optional(rb.INTEGER),
        "text_column": _TEXT,
        "method": rb.STRING,
        # the tuning methods of the model (older folders have only "method" and its options)
        "methods": rb.list_of(
            rb.fields(
                {
                    "name": rb.STRING,
                    "options": rb.OBJECT,
                    "target_modules": rb.optional(rb.list_of(rb.STRING)),
                },
                required=("name", "options"),
            )
        ),
    },
    required=("arch", "backbone", "pooling", "tasks", "labels"),
)
ADAPTER_CONFIG_CHECK = rb.fields({"peft_type": rb.STRING}, required=("peft_type",))


def outputs_root(explicit: str | Path | None = None) -> Path:
    """The outputs folder: ``--outputs``, else ``$LORAKIT_OUTPUTS``, else ``./outputs``."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(OUTPUTS_ENV)
    return Path(env).expanduser().resolve() if env else (Path.cwd() / "outputs").resolve()


@attrs.define(frozen=True)
class RunLayout:
    """Paths of one experiment folder (DESIGN.md's output layout)."""

    root: Path

    @classmethod
    def for_exp(cls, exp_id: str, outputs: str | Path | None = None) -> RunLayout:
        """The folder of ``exp_id`` inside the outputs folder; a name that is not one safe path component
        is refused (never a path that could reach the outputs folder itself or outside it)."""
        problem = exp_id_problem(exp_id)
        if problem is not None:
            from ..errors import LorakitError

            raise LorakitError(f"exp_id: {problem}")
        return cls(outputs_root(outputs) / exp_id)

    @property
    def exp_id(self) -> str:
        return self.root.name

    @property
    def adapter_dir(self) -> Path:
        return self.root / "lora_adapter"

    @property
    def heads_weights(self) -> Path:
        return self.adapter_dir / "heads.safetensors"

    @property
    def heads_json(self) -> Path:
        return self.adapter_dir / "heads.json"

    @property
    def config_copy(self) -> Path:
        return self.root / "config_copy.toml"

    @property
    def label_map(self) -> Path:
        return self.root / "label_map.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def reports(self) -> Path:
        """Per-class reports and confusion matrices, per epoch, for the best epoch and the test split."""
        return self.root / "reports.json"

    @property
    def env_info(self) -> Path:
        return self.root / "env_info.json"

    @property
    def requirements_lock(self) -> Path:
        """Every installed distribution at the run's start, ``pip install -r`` ready (``lorakit env diff``)."""
        return self.root / "requirements.lock"

    @property
    def run_info(self) -> Path:
        """run.json: status, times, task type, key params: what the index needs beyond metrics."""
        return self.root / "run.json"

    @property
    def train_log(self) -> Path:
        return self.root / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter_config(self) -> Path:
        return self.adapter_dir / "adapter_config.json"

    @property
    def adapter_weights(self) -> Path:
        return self.adapter_dir / "adapter_model.safetensors"

    def method_weights(self, method: str) -> Path:
        """The weights of a tuning method that peft does not save (``lora_adapter/<method>.safetensors``)."""
        return self.adapter_dir / f"{method}.safetensors"

    def has_experiment_files(self) -> bool:
        """Does the folder hold a file the trainer writes only after run.json (env_info.json,
        metrics.json, the adapter, checkpoints)? Such a folder without run.json is a damaged experiment,
        not an unknown name nor a run still starting (config_copy.toml and label_map.json come first)."""
        after_run = (self.env_info, self.metrics, self.adapter_dir, self.checkpoints)
        return any(path.exists() for path in after_run)

    def require_run(self) -> None:
        """Raise ``<folder>/run.json: damaged (missing)`` when the folder holds an experiment's files but
        no run.json (or has something else in its place)."""
        if not self.run_info.is_file() and self.has_experiment_files():
            rb.check_file(self.run_info)

    # ---- reading back: each raises DamagedFile when its file is damaged -------------------------------

    def read_run(self) -> RunInfo:
        """run.json (it must exist: a folder without one is not an experiment)."""
        return RunInfo.from_json(rb.read_json(self.run_info, RUN_CHECK))

    def read_run_if_any(self) -> RunInfo | None:
        """run.json, or None when the folder has none (yet)."""
        return self.read_run() if self.run_info.exists() else None

    def write_run(self, info: RunInfo) -> None:
        """Replace run.json atomically with ``info``."""
        write_json_atomic(self.run_info, info.to_json())

    def write_run_in_place(self, info: RunInfo) -> bool:
        """Last resort on a full disk: rewrite run.json in place (its own blocks are freed by the
        truncation, so the record fits where a temp file for an atomic write did not). True when written."""
        data = dumps_json(info.to_json()).encode("utf-8")
        try:
            with open(self.run_info, "r+b") as fh:
                fh.truncate(0)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            return False
        return True

    def read_metrics(self) -> dict[str, Any]:
        """metrics.json; ``{}`` before the first epoch has finished."""
        return rb.read_json(self.metrics, METRICS_CHECK, missing_ok=True) or {}

    def read_reports(self) -> dict[str, Any]:
        """reports.json; ``{}`` when there is none (before the first epoch, or a run from before reports)."""
        return rb.read_json(self.reports, REPORTS_CHECK, missing_ok=True) or {}

    def read_env(self) -> dict[str, Any]:
        """env_info.json; ``{}`` when there is none yet."""
        return rb.read_json(self.env_info, ENV_CHECK, missing_ok=True) or {}

    def read_label_map(self) -> dict[str, Any]:
        """label_map.json; ``{}`` when there is none yet."""
        return rb.read_json(self.label_map, LABEL_MAP_CHECK, missing_ok=True) or {}

    def read_config_copy(self) -> dict[str, Any] | None:
        """config_copy.toml parsed; None when there is none."""
        return rb.read_toml(self.config_copy, CONFIG_COPY_CHECK, missing_ok=True)

    def check_files(self) -> None:
        """Read and check every record file of the folder (run.json, metrics.json, reports.json,
        env_info.json, label_map.json, config_copy.toml): a resume calls this before it touches the folder, since it
        rewrites some of them (metrics.json at the next epoch's end) and must not bury a damaged one."""
        self.require_run()
        self.read_run()
        self.read_metrics()
        self.read_reports()
        self.read_env()
        self.read_label_map()
        self.read_config_copy()

    def read_heads(self) -> dict[str, Any]:
        """lora_adapter/heads.json: how to rebuild the heads, the label names, max_len, the text column."""
        meta: dict[str, Any] = rb.read_json(self.heads_json, HEADS_CHECK)
        for task in meta["tasks"]:
            labels = meta["labels"].get(task["name"])
            if labels is None:
                raise rb.DamagedContent(self.heads_json, f"key 'labels': task {task['name']!r} missing")
            if len(labels["labels"]) != task["num_labels"]:
                raise rb.DamagedContent(
                    self.heads_json,
                    f"task {task['name']!r} has {task['num_labels']} labels but {len(labels['labels'])} names",
                )
        return meta
