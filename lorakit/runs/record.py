"""``run.json`` as a typed record: what a run is (status, times, task type, key params) beyond its metrics.

:class:`RunInfo` is read and written only through :class:`~lorakit.runs.layout.RunLayout`
(:meth:`~lorakit.runs.layout.RunLayout.read_run`, :meth:`~lorakit.runs.layout.RunLayout.write_run`). The
file on disk keeps the shape it always had: the same keys in the same order, a key absent until the run
sets it, and keys this lorakit does not know (a newer one wrote them) kept as they are on a rewrite.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..conventions import headline_or_default

# the keys a run writes when it starts, in the order it writes them (the rest come later, when known)
_STARTED = [
    "exp_id",
    "status",
    "create_time",
    "end_time",
    "task_type",
    "tasks",
    "base_config",
    "config_path",
    "config_display",
    "key_params",
    "headline_metric",
    "device_used",
    "precision",
    "env_version",
    "error",
    "notes",
    "config_fingerprint",
    "data_fingerprint",
    "data_stats",
    "train_tokens",
    "tuning",
    "references",
]


def _mark_written(instance: RunInfo, attribute: attrs.Attribute, value: Any) -> Any:
    """Setting a field puts its key into run.json (at the end, as a dict update would)."""
    if attribute.name in _FIELDS and attribute.name not in instance._keys:
        instance._keys.append(attribute.name)
    return value


# Not frozen: a run fills its record in as it goes (device at the start, peaks at the end, the status
# last), and the record that a failure writes must be the one the run has filled in so far.
@attrs.define(kw_only=True, on_setattr=_mark_written)
class RunInfo:
    """One experiment's ``run.json``. Every field but ``status`` may be missing from older files."""

    exp_id: str | None = None
    status: str = "running"  # one of layout.STATUSES
    create_time: str | None = None
    end_time: str | None = None
    task_type: str | None = None
    tasks: dict[str, list[Any]] | None = None  # each task's labels, in id order
    base_config: str | None = None
    config_path: str | None = None
    config_display: str | None = None
    key_params: dict[str, Any] | None = None
    headline_metric: str | None = None
    device_used: str | None = None
    precision: str | None = None  # fp32 | bf16 | fp16, as used
    env_version: str | None = None
    error: str | None = None  # one line, when failed or preempted
    notes: list[str] | None = None
    config_fingerprint: str | None = None
    data_fingerprint: str | None = None
    data_stats: dict[str, Any] | None = None
    train_tokens: int | None = None  # of one epoch, padding excluded
    # each tuning method in the config's order: method, options, target_modules, trainable_params
    tuning: list[dict[str, Any]] | None = None
    # model.arch and the data paths: {key: {written, resolved, sha256}} (config.references)
    references: dict[str, dict[str, Any]] | None = None
    # set by `lorakit reproduce` on the new run: the experiment it reproduces
    reproduces: str | None = None
    # set once the loop is built, and at the end of training
    world_size: int | None = None
    tf32: bool | None = None
    steps_per_rank: list[int] | None = None
    peak_memory_mb: float | None = None
    peak_reserved_mb: float | None = None
    peak_memory_mb_per_rank: list[float | None] | None = None
    peak_reserved_mb_per_rank: list[float | None] | None = None
    skipped_steps: int | None = None
    # the training epochs' throughput (training.throughput.run_throughput): tokens_processed, tokens_per_s,
    # train_flops_per_token, matmul_peak_flops, mfu
    throughput: dict[str, Any] | None = None
    #: keys this lorakit does not know, kept as they are
    extra: dict[str, Any] = attrs.field(factory=dict)
    # which keys run.json holds, in its order: a key never set stays absent (``peak_memory_mb`` absent
    # means "ask env_info.json", null means "not measured")
    _keys: list[str] = attrs.field(factory=lambda: list(_STARTED), eq=False, repr=False, alias="keys")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunInfo:
        """The record of a run.json already checked against :data:`~lorakit.runs.layout.RUN_CHECK`."""
        known = {key: value for key, value in data.items() if key in _FIELDS}
        extra = {key: value for key, value in data.items() if key not in _FIELDS}
        return cls(**known, extra=extra, keys=list(data))

    def to_json(self) -> dict[str, Any]:
        """run.json's content: the keys it had (or the run set), in their order, then any new extra keys."""
        out = {key: getattr(self, key) if key in _FIELDS else self.extra[key] for key in self._keys}
        out.update((key, value) for key, value in self.extra.items() if key not in out)
        return out

    def has(self, key: str) -> bool:
        """Whether run.json holds ``key`` (older runs lack some; null counts as held)."""
        return key in self._keys or key in self.extra

    def get(self, key: str, default: Any = None) -> Any:
        """The value run.json holds for ``key`` (a field or an extra key), else ``default``: for a field
        that older runs lack, "absent" may mean something else than null (ask env_info.json, say)."""
        if key in self.extra:
            return self.extra[key]
        return getattr(self, key) if key in self._keys else default

    def update(self, **changes: Any) -> None:
        """Set several fields at once (each key then appears in run.json)."""
        for key, value in changes.items():
            if key not in _FIELDS:
                raise AttributeError(f"RunInfo has no field {key!r}")
            setattr(self, key, value)

    @property
    def headline(self) -> str:
        """The metric the run is judged by (the default for runs that recorded none)."""
        return headline_or_default(self.headline_metric)

    def add_notes(self, notes: list[str]) -> bool:
        """Append the notes not yet recorded; True when any was new."""
        have = list(self.notes or [])
        missing = [note for note in notes if note not in have]
        if missing:
            self.notes = have + missing
        return bool(missing)


_FIELDS = frozenset(a.name for a in attrs.fields(RunInfo) if a.name not in ("extra", "_keys"))
