"""A pytest plugin for lorakit plugin authors (loaded automatically through the ``pytest11`` entry point).

Fixtures:

* ``lorakit_pm`` — a fresh :class:`lorakit.plugins.PluginManager` with *no* plugins; register yours.
* ``lorakit_plugins`` — :class:`lorakit.plugins.Plugins` over ``lorakit_pm``, installed as the
  process-wide plugins for the test (restored afterwards).
* ``builtin_plugins`` — a fresh manager with lorakit's own built-ins loaded from their entry points.

Nothing here imports torch until a fixture that needs it runs.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator

import pytest

from .plugins import CORE_DISTRIBUTION, ENTRY_POINT_GROUP, PluginManager, Plugins, new_manager, set_plugins


def load_builtins(pm: PluginManager, *, only: set[str] | None = None) -> None:
    """Register lorakit's own entry-point plugins (optionally only the named ones) into ``pm``."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None and ep.dist.name == CORE_DISTRIBUTION and (only is None or ep.name in only):
            pm.register_plugin(ep.load(), ep.name, ep.dist.name, ep.dist.version)


@pytest.fixture
def lorakit_pm() -> PluginManager:
    """A fresh plugin manager with no plugins registered."""
    return new_manager(load_entrypoints=False)


@pytest.fixture
def lorakit_plugins(lorakit_pm: PluginManager) -> Iterator[Plugins]:
    """Typed plugins over ``lorakit_pm``, active process-wide for the duration of the test."""
    plugins = Plugins(lorakit_pm)
    previous = set_plugins(plugins)
    try:
        yield plugins
    finally:
        set_plugins(previous)


@pytest.fixture
def builtin_plugins() -> Iterator[Plugins]:
    """Typed plugins with only lorakit's built-ins, active process-wide for the duration of the test."""
    pm = new_manager(load_entrypoints=False)
    load_builtins(pm)
    plugins = Plugins(pm)
    previous = set_plugins(plugins)
    try:
        yield plugins
    finally:
        set_plugins(previous)
