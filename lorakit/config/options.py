"""Plugin-owned option tables: each plugin's options class structures and checks its own keys.

* a tuning method's ``[model.<method>]`` table (every registered method with an options class gets one,
  filled with its defaults when the config sets none);
* a head's options: ``[model.head_options]`` for every task, ``[model.heads.<task>.options]`` over it;
* a loss's options: ``train.loss_options`` keys for every task, ``[train.loss_options.<task>]`` over them.

Problems read like the core's: ``(dotted key, problem)``, the key naming the table that set the value.
Nothing here imports torch; the plugin manager is asked, never imported at module level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .converter import Problems, structure_table

if TYPE_CHECKING:
    from ..plugins import Plugins
    from ..specs import TaskHeadSpec
    from .schema import ExperimentConfig


def as_options(value: Any) -> dict[str, Any]:
    """A structured options instance (or a plain table) as the dict handed to a plugin's callables."""
    if value is None:
        return {}
    if attrs.has(type(value)):
        return attrs.asdict(value, recurse=False)
    return dict(value)


def structure_tuning_tables(
    model: Mapping[str, Any], reserved: set[str], plugins: Plugins
) -> tuple[dict[str, Any], Problems]:
    """Each tuning method's table of the raw ``[model]`` table, structured by its options class.

    A method without an options class keeps its table as written (when the config has one). Keys of
    ``reserved`` (the core's own ``[model]`` keys) are never a method's table."""
    tables: dict[str, Any] = {}
    problems: Problems = []
    registry = plugins.tuning_methods()
    for name in registry:
        if name in reserved:
            continue
        spec = registry.get(name)
        given = model.get(name)
        if spec.options is None:
            if given is None:
                continue
            if not isinstance(given, Mapping):
                problems.append((f"model.{name}", "expected a table"))
                continue
            tables[name] = dict(given)
            continue
        value, found = structure_table({} if given is None else given, spec.options, f"model.{name}")
        problems += found
        if value is not None:
            tables[name] = value
    return tables, problems


def tuning_table_problems(tables: Mapping[str, Any]) -> Problems:
    """Each structured table's own range checks (an options class may define ``problems(table)``)."""
    problems: Problems = []
    for name, value in tables.items():
        check = getattr(value, "problems", None)
        if callable(check):
            problems += list(check(f"model.{name}"))
    return problems


def task_head(cfg: ExperimentConfig, task: str, plugins: Plugins) -> tuple[str, str, TaskHeadSpec | None]:
    """The head of ``task``: its name, the key that chose it, and its spec (None: no such head)."""
    override = cfg.model.heads.get(task)
    if override is not None and override.type:
        name, key = override.type, f"model.heads.{task}.type"
    else:
        name, key = cfg.model.head, "model.head"
    registry = plugins.task_heads()
    return name, key, registry.get(name) if name in registry else None


def task_loss(cfg: ExperimentConfig, task: str, head: TaskHeadSpec | None) -> tuple[str, str]:
    """The loss of ``task`` and the key that chose it: the task's, else its head's, else ``train.loss``."""
    override = cfg.model.heads.get(task)
    if override is not None and override.loss:
        return override.loss, f"model.heads.{task}.loss"
    return (head.default_loss if head is not None else None) or cfg.train.loss, "train.loss"


def _layered(
    shared: Mapping[str, Any], shared_key: str, own: Mapping[str, Any], own_key: str, cls: type | None
) -> tuple[dict[str, Any], Problems]:
    """``own`` over ``shared``, structured by ``cls`` (as written without one); each problem is keyed by
    the table that set the value."""
    merged = {**shared, **own}
    if cls is None:
        return merged, []
    value, found = structure_table(merged, cls, "\0")
    problems: Problems = []
    for key, problem in found:
        sub = key.removeprefix("\0").lstrip(".")
        head = sub.split(".", 1)[0]
        table = own_key if head in own else shared_key
        problems.append((f"{table}.{sub}" if sub else table, problem))
    if value is not None:
        check = getattr(value, "problems", None)
        if callable(check):
            problems += list(check(own_key if own else shared_key))
    return (as_options(value) if value is not None else merged), problems


def head_options(
    cfg: ExperimentConfig, task: str, spec: TaskHeadSpec | None
) -> tuple[dict[str, Any], Problems]:
    """The head plugin's own options for ``task`` (without the core's dropout and hidden_size)."""
    override = cfg.model.heads.get(task)
    own = override.options if override is not None else {}
    cls = spec.options if spec is not None else None
    return _layered(cfg.model.head_options, "model.head_options", own, f"model.heads.{task}.options", cls)


def loss_options(cfg: ExperimentConfig, task: str, loss_cls: type | None) -> tuple[dict[str, Any], Problems]:
    """The loss options of ``task``: keys of ``train.loss_options`` that are no task's own table, then
    ``[train.loss_options.<task>]`` over them."""
    given = cfg.train.loss_options
    tasks = set(cfg.task_columns)
    shared = {k: v for k, v in given.items() if not (k in tasks and isinstance(v, Mapping))}
    mine = given.get(task)
    own: Mapping[str, Any] = mine if isinstance(mine, Mapping) else {}
    return _layered(shared, "train.loss_options", own, f"train.loss_options.{task}", loss_cls)


def plugin_option_problems(cfg: ExperimentConfig, plugins: Plugins) -> Problems:
    """Every task's head and loss options checked by the plugins' options classes (each problem once)."""
    problems: Problems = []
    for task in cfg.task_columns:
        _, _, head = task_head(cfg, task, plugins)
        loss, _ = task_loss(cfg, task, head)
        losses = plugins.losses()
        loss_cls = losses.get(loss).options if loss in losses else None
        problems += head_options(cfg, task, head)[1]
        problems += loss_options(cfg, task, loss_cls)[1]
    return list(dict.fromkeys(problems))
