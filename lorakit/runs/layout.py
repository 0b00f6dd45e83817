"""Where everything of one experiment lives: ``outputs/<exp_id>/``.

The folder is the source of truth; the experiment index is a cache rebuilt from these files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs

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
    def env_info(self) -> Path:
        return self.root / "env_info.json"

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
