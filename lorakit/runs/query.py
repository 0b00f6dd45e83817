"""Selecting, ordering and comparing experiments: ``--filter``, ``--sort-by``, ``--only-changed``.

Keys (for ``--filter`` and ``--sort-by``) resolve in this order, the first hit wins:

1. ``exp_id`` and the entry's own fields: ``task_type``, ``status``, ``device_used``, ``create_time``,
   ``end_time``, ``base_config``, ``env_version``, ``headline``, ``best_epoch``, ``output_path``, ``precision``, ``tasks``
   (task names joined by ``,``), and the ``ls`` column names ``model``, ``rank``, ``batch``, ``device``,
   ``created`` as aliases;
2. ``key_params`` fields: ``model``, ``backbone``, ``method``, ``lora_rank``, ``lora_alpha``, ``lr``,
   ``batch_size``, ``epochs``, ``max_len``, ``loss_weight``;
3. best-epoch metrics: ``avg_f1``, ``<task>_f1``, ``<task>_accuracy``, ``accuracy``, ``f1``, ``train_loss`` …,
   and the best epoch's per-class figures ``<task>.<label>_f1`` (``_precision``, ``_recall``);
   the test split's as ``test.avg_f1``, ``test.<task>_f1``, ``test.<task>.<label>_f1`` …;
4. keys of the experiment's ``config_copy.toml``, dotted (``train.lr``, ``model.lora.rank``, ``seed``),
   read from the folder only when a key is not found above. A damaged ``config_copy.toml`` leaves its
   experiment out, with a warning naming the file (:attr:`ConfigCopies.damaged`).

Explicit prefixes skip the search: ``key_params.lr``, ``best.avg_f1`` (or ``best_metrics.avg_f1``),
``config.train.lr``.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..conventions import TASK_TYPES, headline_or_default
from ..errors import DamagedFile, LorakitError, did_you_mean
from ..readback import read_toml
from .index import IndexWarning

MISSING: Any = object()
GLOB_CHARS = frozenset("*?[")
OPERATORS = ("!=", ">=", "<=", "==", "=", ">", "<")
_FILTER_RE = re.compile(r"^\s*([^=!<>\s]+)\s*(!=|>=|<=|==|=|>|<)(.*)$", re.S)

ENTRY_FIELDS = (
    "task_type",
    "status",
    "device_used",
    "create_time",
    "end_time",
    "base_config",
    "env_version",
    "headline",
    "best_epoch",
    "output_path",
    "epochs_done",
    "precision",
)
ALIASES = {
    "rank": "lora_rank",
    "alpha": "lora_alpha",
    "batch": "batch_size",
    "device": "device_used",
    "created": "create_time",
    "ended": "end_time",
}
KEY_PARAM_ORDER = (
    "model",
    "backbone",
    "method",
    "lora_rank",
    "lora_alpha",
    "lr",
    "batch_size",
    "epochs",
    "max_len",
    "loss_weight",
)
N_TASKS = {task_type: n for n, task_type in enumerate(TASK_TYPES, start=1)}


class FilterError(LorakitError):
    """A ``--filter`` or ``--sort-by`` that cannot be understood."""


# ---- config copies ------------------------------------------------------------------------------------


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` → ``{"train.lr": 1}``; lists stay values; empty tables are dropped."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


class ConfigCopies:
    """Flattened ``config_copy.toml`` of each experiment, read lazily and once.

    A missing copy reads as no keys; a damaged one as no keys too, with an :class:`IndexWarning` naming
    it, and its exp_id in :attr:`damaged` so that the command can leave the experiment out.
    """

    def __init__(self, root: Path, entries: Mapping[str, Mapping[str, Any]]):
        self.root = root
        self.entries = entries
        self._cache: dict[str, dict[str, Any]] = {}
        self.damaged: set[str] = set()

    def path(self, exp_id: str) -> Path:
        folder = self.root / exp_id
        if not folder.is_dir():
            fallback = self.entries.get(exp_id, {}).get("output_path")
            if fallback:
                folder = Path(fallback)
        return folder / "config_copy.toml"

    def flat(self, exp_id: str) -> dict[str, Any]:
        if exp_id not in self._cache:
            path = self.path(exp_id)
            try:
                self._cache[exp_id] = flatten(read_toml(path, missing_ok=True) or {})
            except DamagedFile as exc:
                self._cache[exp_id] = {}
                self.damaged.add(exp_id)
                warnings.warn(f"skipped {path.parent}: {exc}", IndexWarning, stacklevel=2)
        return self._cache[exp_id]

    def intact(self, ids: Iterable[str]) -> list[str]:
        """``ids`` without the experiments whose config copy was found damaged."""
        return [exp_id for exp_id in ids if exp_id not in self.damaged]


# ---- resolving keys -----------------------------------------------------------------------------------


def n_tasks(entry: Mapping[str, Any]) -> int:
    tasks = entry.get("tasks")
    if isinstance(tasks, dict) and tasks:
        return len(tasks)
    return N_TASKS.get(str(entry.get("task_type")), 0)


def resolve(exp_id: str, entry: Mapping[str, Any], key: str, configs: ConfigCopies | None) -> Any:
    """The value of ``key`` for one experiment (module docstring: resolution order), or ``MISSING``."""
    key_params = entry.get("key_params") or {}
    best = {**(entry.get("best_metrics") or {}), **(entry.get("class_metrics") or {})}
    test = entry.get("test_metrics") or {}
    for prefix, source in (
        ("key_params.", key_params),
        ("best.", best),
        ("best_metrics.", best),
        ("test.", test),
    ):
        if key.startswith(prefix):
            return source.get(key[len(prefix) :], MISSING)
    if key.startswith("config."):
        return configs.flat(exp_id).get(key[len("config.") :], MISSING) if configs else MISSING
    if key == "exp_id":
        return exp_id
    if key == "tasks":
        tasks = entry.get("tasks")
        return ",".join(tasks) if isinstance(tasks, dict) else MISSING
    name = ALIASES.get(key, key)
    if name in ENTRY_FIELDS and entry.get(name) is not None:
        return entry[name]
    if name in key_params:
        return key_params[name]
    if name in best:
        return best[name]
    if configs is not None:
        return configs.flat(exp_id).get(key, MISSING)
    return MISSING


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return None if math.isnan(number) else number
    return None


def as_text(value: Any) -> str:
    """A value as filters and CSV see it: TOML-ish booleans, JSON for lists and tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if value is None or value is MISSING:
        return ""
    return str(value)


# ---- filters ------------------------------------------------------------------------------------------


class Filter:
    """One ``--filter KEY<op>VALUE``; ``|`` in VALUE separates alternatives (OR)."""

    def __init__(self, text: str):
        match = _FILTER_RE.match(text)
        if not match or not match.group(3).strip():
            raise FilterError(
                f"--filter {text!r}: expected KEY<op>VALUE with op one of = != > >= < <=, "
                "e.g. task_type=multi_cls, avg_f1>=0.9, exp_id=exp_v4*"
            )
        self.text = text
        self.key = match.group(1)
        self.op = "=" if match.group(2) == "==" else match.group(2)
        self.values = tuple(v.strip() for v in match.group(3).split("|") if v.strip())

    def __repr__(self) -> str:
        return f"Filter({self.text!r})"

    def _one(self, value: Any, wanted: str, entry: Mapping[str, Any]) -> bool:
        """Does ``value`` equal (``=``/``!=``) or compare (``< …``) to one alternative?"""
        if self.op in ("=", "!="):
            if self.key == "task_type" and wanted == "multi_cls":
                return n_tasks(entry) >= 2
            if value is MISSING:
                return False
            left, right = as_number(value), as_number(wanted)
            if left is not None and right is not None:
                return left == right
            text = as_text(value)
            if text == wanted:
                return True
            if isinstance(value, (list, dict)):  # loss_weight=[0.6, 0.4]: compare as data, spaces aside
                try:
                    return bool(json.loads(wanted) == value)
                except ValueError:
                    pass
            return bool(GLOB_CHARS & set(wanted)) and fnmatch.fnmatchcase(text, wanted)
        if value is MISSING or value is None:
            return False
        left, right = as_number(value), as_number(wanted)
        if left is None or right is None:  # strings compare as text: create_time>=2024-05-21
            left, right = as_text(value), wanted  # type: ignore[assignment]
        if self.op == ">":
            return left > right  # type: ignore[operator]
        if self.op == ">=":
            return left >= right  # type: ignore[operator]
        if self.op == "<":
            return left < right  # type: ignore[operator]
        return left <= right  # type: ignore[operator]

    def matches(self, exp_id: str, entry: Mapping[str, Any], configs: ConfigCopies | None) -> bool:
        value = resolve(exp_id, entry, self.key, configs)
        hit = any(self._one(value, wanted, entry) for wanted in self.values)
        # "status!=failed|preempted" means neither; a missing value is "not equal".
        return not hit if self.op == "!=" else hit


def known_keys(entries: Mapping[str, Mapping[str, Any]], configs: ConfigCopies | None) -> list[str]:
    keys = {"exp_id", "tasks", *ENTRY_FIELDS, *ALIASES}
    for exp_id, entry in entries.items():
        keys.update(entry.get("key_params") or {})
        keys.update(entry.get("best_metrics") or {})
        keys.update(entry.get("class_metrics") or {})
        keys.update(f"test.{key}" for key in entry.get("test_metrics") or {})
        if configs is not None:
            keys.update(configs.flat(exp_id))
    return sorted(keys)


def check_key(
    key: str, entries: Mapping[str, Mapping[str, Any]], configs: ConfigCopies | None, what: str
) -> None:
    """Raise a did-you-mean error when no experiment has ``key`` (a typo would otherwise match nothing)."""
    if not entries or key == "task_type":
        return
    if any(resolve(exp_id, entry, key, configs) is not MISSING for exp_id, entry in entries.items()):
        return
    raise FilterError(
        f"{what}: no experiment has a key {key!r}{did_you_mean(key, known_keys(entries, configs))}"
    )


def apply_filters(
    entries: Mapping[str, Mapping[str, Any]],
    filters: Iterable[str],
    configs: ConfigCopies | None = None,
) -> dict[str, Mapping[str, Any]]:
    """The entries that pass every filter (AND), in their original order."""
    parsed = [Filter(text) for text in filters]
    for flt in parsed:
        check_key(flt.key, entries, configs, f"--filter {flt.text!r}")
    return {
        exp_id: entry
        for exp_id, entry in entries.items()
        if all(flt.matches(exp_id, entry, configs) for flt in parsed)
    }


# ---- ordering -----------------------------------------------------------------------------------------


def default_order(entries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Oldest first (newest at the bottom of the table), then by exp_id."""
    return sorted(entries, key=lambda exp_id: (str(entries[exp_id].get("create_time") or ""), exp_id))


def sort_ids(
    ids: Iterable[str],
    entries: Mapping[str, Mapping[str, Any]],
    key: str,
    *,
    ascending: bool = False,
    configs: ConfigCopies | None = None,
) -> list[str]:
    """Order by ``key`` (a best metric, or any key as for filters): descending unless ``ascending``,
    experiments without the key last either way; ties keep their order."""
    ids = list(ids)
    check_key(key, {i: entries[i] for i in ids}, configs, f"--sort-by {key!r}")
    numbers: list[tuple[float, str]] = []
    texts: list[tuple[str, str]] = []
    missing: list[str] = []
    for exp_id in ids:
        value = resolve(exp_id, entries[exp_id], key, configs)
        number = as_number(value)
        if value is MISSING or value is None:
            missing.append(exp_id)
        elif number is not None:
            numbers.append((number, exp_id))
        else:
            texts.append((as_text(value), exp_id))
    # Python's sort is stable in both directions: ties keep their order.
    numbers.sort(key=lambda item: item[0], reverse=not ascending)
    texts.sort(key=lambda item: item[0], reverse=not ascending)
    return [exp_id for _, exp_id in numbers] + [exp_id for _, exp_id in texts] + missing


# ---- label sets ---------------------------------------------------------------------------------------


def label_set_text(tasks: Mapping[str, Any] | None) -> str:
    """``risk_level[低风险,中风险,高风险] + is_adopt[采纳,不采纳]``."""
    if not tasks:
        return "unknown labels"
    return " + ".join(f"{task}[{','.join(map(str, labels))}]" for task, labels in tasks.items())


def label_set_warning(
    entries: Mapping[str, Mapping[str, Any]], ids: Iterable[str], limit: int = 4
) -> str | None:
    """A one-line warning when the experiments do not share one label set (their metrics then measure
    different things), naming each label set and the experiments that use it; None when they agree."""
    groups: dict[str, list[str]] = {}
    for exp_id in ids:
        groups.setdefault(label_set_text(entries[exp_id].get("tasks")), []).append(exp_id)
    if len(groups) < 2:
        return None
    parts = []
    for text, members in groups.items():
        more = len(members) - limit
        shown = ", ".join(members[:limit]) + (f" and {more} more" if more > 0 else "")
        parts.append(f"{shown} {'has' if len(members) == 1 else 'have'} {text}")
    return "label sets differ, metrics are not directly comparable: " + "; ".join(parts)


# ---- compare ------------------------------------------------------------------------------------------


def metric_order(names: Iterable[str], headlines: Iterable[str], tasks: Iterable[str]) -> list[str]:
    """Headline metric(s) first, then per task in task order, then plain accuracy/f1, then the rest."""
    names = list(dict.fromkeys(names))
    headlines = list(dict.fromkeys(headlines))
    tasks = list(dict.fromkeys(tasks))

    def rank(name: str) -> tuple[int, int, int]:
        if name in headlines:
            return (0, headlines.index(name), 0)
        for i, task in enumerate(tasks):
            if name.startswith(task + "_"):
                return (1, i, 0)
        if name in ("accuracy", "f1"):
            return (2, 0, 0)
        return (3, 0, 0)

    return sorted(names, key=lambda name: (*rank(name), names.index(name)))


def compare_rows(
    ids: list[str],
    entries: Mapping[str, Mapping[str, Any]],
    *,
    only_changed: bool = False,
    configs: ConfigCopies | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows for ``lorakit compare``: exp_id, task_type, status, key params (or, with
    ``only_changed``, the config keys that differ), best epoch and best metrics."""
    metrics = metric_order(
        (name for i in ids for name in entries[i].get("best_metrics") or {}),
        (headline_or_default(entries[i].get("headline")) for i in ids),
        (task for i in ids for task in entries[i].get("tasks") or {}),
    )
    if only_changed:
        if configs is None:
            raise ValueError("only_changed needs the config copies")
        params = changed_keys({i: configs.flat(i) for i in ids})
        head = ["exp_id", "precision"]
    else:
        present = {name for i in ids for name in entries[i].get("key_params") or {}}
        params = [name for name in KEY_PARAM_ORDER if name in present]
        params += sorted(present - set(params))
        head = ["exp_id", "task_type", "status", "precision"]
    # the test split's headline figures, where any of these experiments was scored on one
    headlines = dict.fromkeys(headline_or_default(entries[i].get("headline")) for i in ids)
    tests = [f"test.{h}" for h in headlines if any(h in (entries[i].get("test_metrics") or {}) for i in ids)]
    columns = [*head, *params, "best_epoch", *metrics, *tests]
    rows = []
    for exp_id in ids:
        entry = entries[exp_id]
        source = configs.flat(exp_id) if only_changed and configs else entry.get("key_params") or {}
        row: dict[str, Any] = {"exp_id": exp_id}
        for name in head[1:]:
            row[name] = entry.get(name)
        for name in params:
            row[name] = source.get(name)
        row["best_epoch"] = entry.get("best_epoch")
        best = entry.get("best_metrics") or {}
        for name in metrics:
            row[name] = best.get(name)
        for name in tests:
            row[name] = (entry.get("test_metrics") or {}).get(name[len("test.") :])
        rows.append(row)
    return columns, rows


def changed_keys(flats: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Dotted config keys whose value is not the same in every experiment (absent counts as a value);
    ``exp_id`` is left out, it is the row's name."""
    order: dict[str, None] = {}
    for flat in flats.values():
        order.update(dict.fromkeys(flat))
    changed = []
    for key in order:
        if key == "exp_id":
            continue
        values = {
            as_text(flat.get(key, MISSING)) + ("" if key in flat else "\0missing") for flat in flats.values()
        }
        if len(values) > 1:
            changed.append(key)
    return changed


def select(
    entries: Mapping[str, Mapping[str, Any]],
    patterns: Iterable[str],
    unknown: Callable[[str], str],
) -> list[str]:
    """The exp_ids named on the command line, in that order; a glob (``exp_v4*``) picks every match.

    ``unknown(name)`` builds the error message for a name that matches nothing.
    """
    chosen: dict[str, None] = {}
    for pattern in patterns:
        if GLOB_CHARS & set(pattern):
            hits = [exp_id for exp_id in default_order(entries) if fnmatch.fnmatchcase(exp_id, pattern)]
            if not hits:
                raise LorakitError(f"no experiment matches {pattern!r}")
            chosen.update(dict.fromkeys(hits))
        elif pattern in entries:
            chosen[pattern] = None
        else:
            raise LorakitError(unknown(pattern))
    return list(chosen)
