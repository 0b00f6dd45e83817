"""The plugin manager: entry-point loading, block/allow lists, typed registries, a typed hook wrapper.

Core code never calls ``pm.hook.*`` directly; it goes through :class:`Plugins`.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import attrs
import pluggy

from . import hookspecs
from .errors import LorakitWarning, PluginError, did_you_mean
from .specs import (
    SPEC_KINDS,
    BackboneSpec,
    DataSourceSpec,
    Device,
    ExecutorSpec,
    LossSpec,
    LRSchedulerSpec,
    MetricSpec,
    TaskHeadSpec,
    TuningMethodSpec,
)

ENTRY_POINT_GROUP = "lorakit"
CORE_DISTRIBUTION = "lorakit"

# Where a missing name is known to live: a data table beside the built-ins (lorakit.builtin.providers).
from .builtin.providers import KNOWN_PROVIDERS  # noqa: E402  (a table of names, no plugin code)

S = TypeVar("S")

SINGULAR = {
    "backbones": "backbone",
    "tuning_methods": "tuning method",
    "task_heads": "task head",
    "losses": "loss",
    "metrics": "metric",
    "lr_schedulers": "LR scheduler",
    "data_sources": "data source",
    "executors": "executor",
}


@attrs.define(kw_only=True, frozen=True)
class PluginInfo:
    """One registered plugin: where it came from and which hooks it implements."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


@attrs.define(kw_only=True, frozen=True)
class LoadFailure:
    name: str
    distribution: str | None
    version: str | None
    reason: str

    def message(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "unknown distribution"
        return f'Error loading plugin "{self.name}" ({dist}): {self.reason}'


@attrs.define(kw_only=True, frozen=True)
class Registered(Generic[S]):
    spec: S
    plugin: str
    distribution: str | None


class Registry(Generic[S]):
    """Name → spec for one kind (metrics, losses, ...). Duplicate names are an error naming both sources."""

    def __init__(self, kind: str):
        self.kind = kind
        self.singular = SINGULAR.get(kind, kind)
        self._items: dict[str, Registered[S]] = {}

    def add(self, spec: S, *, plugin: str, distribution: str | None) -> None:
        expected = SPEC_KINDS[self.kind]
        if not isinstance(spec, expected):
            raise PluginError(
                f"plugin {plugin!r} registered a {type(spec).__name__} as {self.kind}; "
                f"expected {expected.__name__}"
            )
        name = spec.name  # type: ignore[attr-defined]
        if name in self._items:
            raise PluginError(self.clash_message(name, plugin=plugin, distribution=distribution))
        self._items[name] = Registered(spec=spec, plugin=plugin, distribution=distribution)

    def clash_message(self, name: str, *, plugin: str, distribution: str | None) -> str:
        first = self._items[name]
        return (
            f"{self.singular} {name!r} is registered twice: by plugin "
            f"{first.plugin!r} ({first.distribution or 'no distribution'}) and by plugin "
            f"{plugin!r} ({distribution or 'no distribution'})"
        )

    def get(self, name: str) -> S:
        try:
            return self._items[name].spec
        except KeyError:
            raise PluginError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        singular = self.singular
        known = ", ".join(sorted(self._items)) or "none"
        msg = f"unknown {singular} {name!r}{did_you_mean(name, self._items)}; available: {known}"
        provider = KNOWN_PROVIDERS.get((self.kind, name))
        if provider:
            msg += f"; {name!r} is provided by {provider}: pip install {provider}"
        return msg

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def specs(self) -> list[S]:
        return [self._items[n].spec for n in self]

    def source(self, name: str) -> Registered[S]:
        return self._items[name]


def _split_env(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers each plugin's distribution and the plugins that failed to load."""

    def __init__(self) -> None:
        super().__init__("lorakit")
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, tuple[str | None, str | None]] = {}
        self.failures: list[LoadFailure] = []
        self.report: Callable[[str], None] | None = None

    def register_plugin(
        self, plugin: Any, name: str, distribution: str | None = None, version: str | None = None
    ) -> None:
        """Register ``plugin``; a hook name lorakit does not define is a :class:`PluginError` (a typo in a
        hook name would otherwise make the plugin silently do nothing)."""
        self.register(plugin, name=name)
        problem = _hook_problem(self, plugin)
        if problem is not None:
            self.unregister(name=name)
            raise PluginError(problem)
        self.distributions[name] = (distribution, version)

    def leave_out(self, name: str, reason: str, report: Callable[[str], None] | None = None) -> None:
        """Unregister a plugin that failed after loading and report it like an import failure."""
        dist, version = self.distributions.pop(name, (None, None))
        if self.has_plugin(name):
            self.unregister(name=name)
        failure = LoadFailure(name=name, distribution=dist, version=version, reason=reason)
        self.failures.append(failure)
        (report or self.report or _stderr)(failure.message())

    def load_entrypoints(
        self,
        *,
        disable: set[str] | None = None,
        allow: set[str] | None = None,
        only: set[str] | None = None,
        core_only: bool = False,
        strict: bool = False,
        report: Callable[[str], None] | None = None,
    ) -> None:
        """Load ``lorakit`` entry points, skipping blocked ones; a broken plugin is reported, not fatal.

        The one loader, used by the CLI (``new_manager``) and by :mod:`lorakit.testing`. ``allow``
        (``LORAKIT_LOAD_PLUGINS``) restricts third-party plugins; the built-ins of the lorakit distribution
        itself are essential and always load unless named in ``disable``. ``only`` loads just the named
        entry points, ``core_only`` just lorakit's own; ``strict`` raises a :class:`PluginError` for a
        plugin that fails to load instead of reporting it (what a plugin's own tests want).
        """
        disable = disable or set()
        self.report = report
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            essential = dist == CORE_DISTRIBUTION
            skip = (
                ep.name in disable
                or (dist and dist in disable)
                or (only is not None and ep.name not in only)
                or (core_only and not essential)
                or (allow is not None and not essential and ep.name not in allow and dist not in allow)
            )
            if skip or self.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
                self.register_plugin(plugin, ep.name, dist, version)
            except (Exception, SystemExit) as exc:  # a broken plugin must never take the CLI down
                reason = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
                reason = " ".join(reason.split())
                self.distributions[ep.name] = (dist, version)
                if strict:
                    raise PluginError(
                        LoadFailure(name=ep.name, distribution=dist, version=version, reason=reason).message()
                    ) from exc
                self.leave_out(ep.name, reason, report)

    def infos(self) -> list[PluginInfo]:
        result = []
        for name, plugin in self.list_name_plugin():
            dist, version = self.distributions.get(name, (None, None))
            hooks = tuple(sorted(h.name for h in self.get_hookcallers(plugin) or []))
            result.append(PluginInfo(name=name, distribution=dist, version=version, hooks=hooks))
        return sorted(result, key=lambda p: p.name)


def _hook_problem(pm: pluggy.PluginManager, plugin: Any) -> str | None:
    """Why lorakit refuses a registered plugin's hooks, or None: a hook name lorakit does not define (a typo
    would make the plugin silently do nothing), or a hook wrapper (lorakit calls each plugin's
    implementation on its own, so that one failing plugin cannot stop the others; a wrapper would wrap
    nothing)."""
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec():
            known = [n for n in dir(hookspecs) if n.startswith("lorakit_")]
            return f"unknown hook {caller.name}{did_you_mean(caller.name, known)}"
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper):
                return f"{caller.name}: hook wrappers are not supported by lorakit's hooks"
    return None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def new_manager(
    *, load_entrypoints: bool = True, report: Callable[[str], None] | None = None
) -> PluginManager:
    """A fresh manager honouring ``LORAKIT_DISABLE_PLUGINS`` and ``LORAKIT_LOAD_PLUGINS``."""
    pm = PluginManager()
    if os.environ.get("LORAKIT_TRACE_PLUGINS"):  # every hook call and its result, on stderr
        pm.trace.root.setwriter(lambda text: sys.stderr.write(f"lorakit-trace: {text}"))
        pm.enable_tracing()
    if load_entrypoints:
        pm.load_entrypoints(
            disable=_split_env(os.environ.get("LORAKIT_DISABLE_PLUGINS")),
            allow=_split_env(os.environ.get("LORAKIT_LOAD_PLUGINS")),
            report=report,
        )
    return pm


class Plugins:
    """Typed access to the hooks: one method per hook, registries built once and cached.

    A plugin whose registration hook raises or registers something invalid is left out whole (none of its
    specs, none of its event hooks) and reported like an import failure; a raising event hook is a warning.
    """

    def __init__(self, pm: PluginManager):
        self.pm = pm
        self._registries: dict[str, Registry[Any]] | None = None

    def _registry(self, kind: str) -> Registry[Any]:
        return self.registries()[kind]

    def _call_one(self, hook_name: str, impl: Any, **kwargs: Any) -> Any:
        """Call one plugin's implementation through pluggy (its argument rules, its tracing)."""
        caller = getattr(self.pm.hook, hook_name)
        firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))
        # pluggy's own executor with this one implementation (subset_hook_caller would need hashable
        # plugins; a plugin may be any object)
        result: Any = self.pm._hookexec(hook_name, [impl], kwargs, firstresult)
        if firstresult:
            return result
        return result[0] if result else None  # one implementation: its result, or none

    def _collect(self) -> tuple[list[str], dict[str, list[tuple[str, Any]]]]:
        """Call every registration hook; return plugin order and what each plugin registered."""
        order: list[str] = []
        staged: dict[str, list[tuple[str, Any]]] = {}
        broken: dict[str, str] = {}
        for kind in SPEC_KINDS:
            hook = getattr(self.pm.hook, f"lorakit_register_{kind}")
            for impl in hook.get_hookimpls():
                name = impl.plugin_name
                if name in broken:
                    continue
                if name not in staged:
                    order.append(name)
                items = staged.setdefault(name, [])

                def register(spec: Any, _kind: str = kind, _items: list = items) -> None:
                    _items.append((_kind, spec))

                try:
                    self._call_one(hook.name, impl, register=register)
                except Exception as exc:
                    broken[name] = f"{hook.name} raised {type(exc).__name__}: {exc}"
                    continue
                for _kind, spec in items:
                    if not isinstance(spec, SPEC_KINDS[_kind]):
                        broken[name] = (
                            f"registered a {type(spec).__name__} as {_kind}; "
                            f"expected {SPEC_KINDS[_kind].__name__}"
                        )
        for name, reason in broken.items():
            self.pm.leave_out(name, reason)
        return [n for n in order if n not in broken], staged

    def registries(self) -> dict[str, Registry[Any]]:
        if self._registries is not None:
            return self._registries
        registries: dict[str, Registry[Any]] = {kind: Registry(kind) for kind in SPEC_KINDS}
        order, staged = self._collect()
        # in a clash lorakit's own built-ins win; between third-party plugins, the first one loaded
        order.sort(key=lambda n: self.pm.distributions.get(n, (None, None))[0] != CORE_DISTRIBUTION)
        for name in order:
            dist = self.pm.distributions.get(name, (None, None))[0]
            clash = next(
                (
                    registries[kind].clash_message(spec.name, plugin=name, distribution=dist)
                    for kind, spec in staged[name]
                    if spec.name in registries[kind]
                ),
                None,
            )
            if clash is not None:  # the later plugin is left out; the earlier one keeps working
                self.pm.leave_out(name, clash)
                continue
            for kind, spec in staged[name]:
                registries[kind].add(spec, plugin=name, distribution=dist)
        self._registries = registries
        return registries

    def backbones(self) -> Registry[BackboneSpec]:
        return self._registry("backbones")

    def tuning_methods(self) -> Registry[TuningMethodSpec]:
        return self._registry("tuning_methods")

    def task_heads(self) -> Registry[TaskHeadSpec]:
        return self._registry("task_heads")

    def losses(self) -> Registry[LossSpec]:
        return self._registry("losses")

    def metrics(self) -> Registry[MetricSpec]:
        return self._registry("metrics")

    def lr_schedulers(self) -> Registry[LRSchedulerSpec]:
        return self._registry("lr_schedulers")

    def data_sources(self) -> Registry[DataSourceSpec]:
        return self._registry("data_sources")

    def executors(self) -> Registry[ExecutorSpec]:
        return self._registry("executors")

    def data_source_for(self, path: str) -> DataSourceSpec:
        """The data source whose suffix matches ``path`` (longest suffix wins: ``.jsonl`` before ``.json``)."""
        lowered = str(path).lower()
        best: tuple[int, DataSourceSpec] | None = None
        for spec in self.data_sources().specs():
            for suffix in spec.suffixes:
                if lowered.endswith(suffix.lower()) and (best is None or len(suffix) > best[0]):
                    best = (len(suffix), spec)
        if best is None:
            known = sorted({s for spec in self.data_sources().specs() for s in spec.suffixes})
            raise PluginError(
                f"{path}: no data source reads this file type; known suffixes: {', '.join(known)}"
            )
        return best[1]

    def _each(self, hook_name: str, *, firstresult: bool = False, **kwargs: Any) -> Any:
        """Call each implementation of a hook (newest first, as pluggy does), with the arguments it takes.

        An implementation that raises is a warning naming the plugin, never the caller's failure: a tracker
        or a device probe must not take a run or a command down.
        """
        results = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                result = self._call_one(hook_name, impl, **kwargs)
            except Exception as exc:
                warnings.warn(
                    f'plugin "{impl.plugin_name}": {hook_name} raised {type(exc).__name__}: {exc}; ignored',
                    LorakitWarning,
                    stacklevel=2,
                )
                continue
            if result is not None:
                if firstresult:
                    return result
                results.append(result)
        return None if firstresult else results

    def resolve_backbone(self, model_config: Any) -> str | None:
        return self._each("lorakit_resolve_backbone", firstresult=True, model_config=model_config)

    def detect_devices(self) -> list[Device]:
        return list(self._each("lorakit_detect_devices", firstresult=True) or [])

    def on_run_start(self, *, exp_id: str, config: Mapping[str, Any], output_dir: str) -> None:
        self._each("lorakit_on_run_start", exp_id=exp_id, config=config, output_dir=output_dir)

    def on_epoch_end(self, *, exp_id: str, epoch: int, metrics: Mapping[str, float]) -> None:
        self._each("lorakit_on_epoch_end", exp_id=exp_id, epoch=epoch, metrics=metrics)

    def on_run_end(self, *, exp_id: str, status: str, metrics: Mapping[str, Any], output_dir: str) -> None:
        self._each("lorakit_on_run_end", exp_id=exp_id, status=status, metrics=metrics, output_dir=output_dir)

    def describe(self) -> list[dict[str, Any]]:
        """What ``lorakit plugins --json`` prints: one dict per plugin (and one per load failure)."""
        registered: dict[str, dict[str, list[str]]] = {}
        for kind, registry in self.registries().items():
            for name in registry:
                registered.setdefault(registry.source(name).plugin, {}).setdefault(kind, []).append(name)
        rows: list[dict[str, Any]] = []
        for info in self.pm.infos():
            rows.append(
                {
                    "name": info.name,
                    "kind": "builtin" if info.distribution == CORE_DISTRIBUTION else "external",
                    "distribution": info.distribution,
                    "version": info.version,
                    "hooks": list(info.hooks),
                    "registered": registered.get(info.name, {}),
                    "error": None,
                }
            )
        for failure in self.pm.failures:
            rows.append(
                {
                    "name": failure.name,
                    "kind": "builtin" if failure.distribution == CORE_DISTRIBUTION else "external",
                    "distribution": failure.distribution,
                    "version": failure.version,
                    "hooks": [],
                    "registered": {},
                    "error": failure.reason,
                }
            )
        return rows


_current: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded from entry points on first use."""
    global _current
    if _current is None:
        _current = Plugins(new_manager())
    return _current


def set_plugins(plugins: Plugins | None) -> Plugins | None:
    """Swap the process-wide plugins (tests, embedding); returns the previous ones."""
    global _current
    previous, _current = _current, plugins
    return previous
