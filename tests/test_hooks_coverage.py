"""One test per registration hook: a third-party plugin's registration reaches the typed wrapper.

The built-in plugins are tested for what they do elsewhere (test_builtin_*.py); here each hook is exercised
the way an external package uses it, so that tests/test_docs_meta.py finds a test for every hook.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from lorakit import hookimpl
from lorakit.plugins import Plugins
from lorakit.specs import (
    BackboneSpec,
    DataSourceSpec,
    ExecutorSpec,
    LossSpec,
    LRSchedulerSpec,
    TaskHeadSpec,
    TuningMethodSpec,
)


def _unused(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("not called by this test")


# hook, registry kind, a spec the plugin registers
REGISTRATIONS = [
    (
        "lorakit_register_backbones",
        "backbones",
        BackboneSpec(name="tinyenc", model_types=("tinyenc",), load_model=_unused, load_tokenizer=_unused),
    ),
    ("lorakit_register_tuning_methods", "tuning_methods", TuningMethodSpec(name="frozen", apply=_unused)),
    ("lorakit_register_task_heads", "task_heads", TaskHeadSpec(name="bilinear", build=_unused)),
    ("lorakit_register_losses", "losses", LossSpec(name="hinge", build=_unused)),
    ("lorakit_register_lr_schedulers", "lr_schedulers", LRSchedulerSpec(name="step_down", build=_unused)),
    (
        "lorakit_register_data_sources",
        "data_sources",
        DataSourceSpec(name="psv", suffixes=(".psv",), read=_unused),
    ),
    ("lorakit_register_executors", "executors", ExecutorSpec(name="inline", create=_unused)),
]


def plugin_with(hook: str, function: Any) -> types.SimpleNamespace:
    """A plugin object implementing one hook (what a module with one @hookimpl function looks like)."""
    return types.SimpleNamespace(**{hook: hookimpl(function)})


@pytest.mark.parametrize(("hook", "kind", "spec"), REGISTRATIONS, ids=[r[0] for r in REGISTRATIONS])
def test_registration_reaches_the_typed_registry(lorakit_pm, hook: str, kind: str, spec: Any) -> None:
    lorakit_pm.register_plugin(
        plugin_with(hook, lambda register: register(spec)), "ext", "lorakit-ext", "1.0"
    )
    plugins = Plugins(lorakit_pm)
    registry = getattr(plugins, kind)()  # the typed method, e.g. plugins.backbones()
    assert registry.get(spec.name) is spec
    assert registry.source(spec.name).distribution == "lorakit-ext"
    # what `lorakit plugins` reports for it
    (row,) = plugins.describe()
    assert row["hooks"] == [hook] and row["registered"] == {kind: [spec.name]}


@pytest.mark.parametrize(("hook", "kind", "spec"), REGISTRATIONS, ids=[r[0] for r in REGISTRATIONS])
def test_registering_the_wrong_spec_type_leaves_the_plugin_out(
    lorakit_pm, hook: str, kind: str, spec: Any
) -> None:
    wrong = LossSpec(name="x", build=_unused) if kind != "losses" else TaskHeadSpec(name="x", build=_unused)
    lorakit_pm.register_plugin(plugin_with(hook, lambda register: register(wrong)), "ext")
    reports: list[str] = []
    lorakit_pm.report = reports.append
    assert "x" not in getattr(Plugins(lorakit_pm), kind)()
    assert (
        len(reports) == 1
        and reports[0].startswith('Error loading plugin "ext"')
        and f"as {kind}" in reports[0]
    )
    assert not lorakit_pm.has_plugin("ext")


def test_a_data_source_plugin_reads_its_suffix(lorakit_pm, tmp_path: Path) -> None:
    import pandas as pd

    def read(path: Path, options: Any) -> pd.DataFrame:
        return pd.read_csv(path, sep="|", encoding=options.encoding)

    spec = DataSourceSpec(name="psv", suffixes=(".psv",), read=read)
    lorakit_pm.register_plugin(
        plugin_with("lorakit_register_data_sources", lambda register: register(spec)), "psv"
    )
    path = tmp_path / "train.psv"
    path.write_text("text|label\n很好|正面\n", encoding="utf-8")
    chosen = Plugins(lorakit_pm).data_source_for(str(path))
    assert chosen is spec
    from lorakit.specs import ReadOptions

    assert chosen.read(path, ReadOptions()).to_dict("records") == [{"text": "很好", "label": "正面"}]


def test_an_lr_scheduler_plugin_builds_a_working_schedule(lorakit_pm) -> None:
    import torch

    def build(optimizer: Any, num_warmup_steps: int, num_training_steps: int) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** (step // 2))

    spec = LRSchedulerSpec(name="step_down", build=build)
    lorakit_pm.register_plugin(
        plugin_with("lorakit_register_lr_schedulers", lambda register: register(spec)), "sched"
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = Plugins(lorakit_pm).lr_schedulers().get("step_down").build(optimizer, 0, 10)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_a_task_head_plugin_builds_its_module(lorakit_pm) -> None:
    import torch

    def build(hidden_size: int, num_labels: int, options: dict) -> Any:
        return torch.nn.Linear(hidden_size, num_labels)

    spec = TaskHeadSpec(name="plain", build=build, default_loss="cross_entropy")
    lorakit_pm.register_plugin(
        plugin_with("lorakit_register_task_heads", lambda register: register(spec)), "heads"
    )
    head = Plugins(lorakit_pm).task_heads().get("plain").build(8, 3, {"dropout": 0.1})
    assert head(torch.zeros(2, 8)).shape == (2, 3)
