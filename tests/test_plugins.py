"""The plugin system: entry points, block/allow lists, broken plugins, registries, the typed wrapper."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from lorakit import hookimpl
from lorakit.errors import PluginError
from lorakit.plugins import Plugins
from lorakit.specs import BackboneSpec, Device, MetricSpec


def make_distribution(
    root: Path, dist: str, version: str, modules: dict[str, str], entry_points: dict[str, str]
):
    """A throw-away installed distribution: a module plus a .dist-info with its entry points."""
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[lorakit]\n{lines}\n", encoding="utf-8")
    return root


GOOD_PLUGIN = """
    from lorakit import hookimpl
    from lorakit.specs import MetricSpec

    @hookimpl
    def lorakit_register_metrics(register):
        register(MetricSpec(name="always_one", compute=lambda y_true, y_pred, num_labels: 1.0))
"""


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    make_distribution(
        tmp_path, "lorakit-fake", "1.2.3", {"lorakit_fake": GOOD_PLUGIN}, {"fake": "lorakit_fake"}
    )
    (tmp_path / "broken").mkdir()
    make_distribution(
        tmp_path / "broken",
        "lorakit-broken",
        "0.0.1",
        {"lorakit_broken": "raise RuntimeError('boom at import')"},
        {"broken": "lorakit_broken"},
    )
    return tmp_path


def test_plugins_json_lists_builtins_with_distribution(cli):
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"metrics", "losses", "lr_schedulers", "sources"} <= set(rows)
    metrics = rows["metrics"]
    # the pinned shape of `lorakit plugins --json`
    assert set(metrics) == {"name", "kind", "distribution", "version", "hooks", "registered", "error"}
    assert metrics["distribution"] == "lorakit" and metrics["kind"] == "builtin"
    assert metrics["hooks"] == ["lorakit_register_metrics"]
    assert set(metrics["registered"]["metrics"]) >= {"accuracy", "macro_f1", "micro_f1", "weighted_f1"}
    assert rows["sources"]["registered"]["data_sources"] == ["csv", "json", "jsonl", "parquet", "tsv"]


def test_external_plugin_is_listed_and_broken_one_reported(cli, plugin_path: Path):
    env = {"PYTHONPATH": f"{plugin_path}:{plugin_path / 'broken'}"}
    result = cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["fake"]["distribution"] == "lorakit-fake" and rows["fake"]["version"] == "1.2.3"
    assert rows["fake"]["kind"] == "external"
    assert rows["fake"]["registered"] == {"metrics": ["always_one"]}
    assert rows["broken"]["error"] == "RuntimeError: boom at import"

    text = cli("plugins", env=env)
    assert text.returncode == 0
    assert "fake (lorakit-fake 1.2.3, external)" in text.stdout
    assert "broken (lorakit-broken 0.0.1): failed to load: RuntimeError: boom at import" in text.stdout


def test_disable_and_allow_lists(cli, plugin_path: Path):
    env = {"PYTHONPATH": str(plugin_path)}
    names = lambda r: {row["name"] for row in json.loads(r.stdout)}  # noqa: E731
    assert "fake" not in names(cli("plugins", "--json", env={**env, "LORAKIT_DISABLE_PLUGINS": "fake"}))
    assert "metrics" not in names(
        cli("plugins", "--json", env={**env, "LORAKIT_DISABLE_PLUGINS": "metrics, x"})
    )
    # an empty allowlist keeps only the essential built-ins
    only_builtin = names(cli("plugins", "--json", env={**env, "LORAKIT_LOAD_PLUGINS": ""}))
    assert "fake" not in only_builtin and "metrics" in only_builtin
    assert "fake" in names(cli("plugins", "--json", env={**env, "LORAKIT_LOAD_PLUGINS": "lorakit-fake"}))


def test_duplicate_names_name_both_distributions(lorakit_pm):
    class A:
        @hookimpl
        def lorakit_register_metrics(self, register):
            register(MetricSpec(name="f1", compute=lambda *a: 0.0))

    class B:
        @hookimpl
        def lorakit_register_metrics(self, register):
            register(MetricSpec(name="f1", compute=lambda *a: 1.0))

    lorakit_pm.register_plugin(A(), "a", "dist-a", "1")
    lorakit_pm.register_plugin(B(), "b", "dist-b", "2")
    reports: list[str] = []
    lorakit_pm.report = reports.append
    plugins = Plugins(lorakit_pm)
    assert plugins.metrics().source("f1").plugin == "a"  # the first keeps working, the second is left out
    (message,) = reports
    assert message.startswith('Error loading plugin "b" (dist-b 2): ')
    assert "'f1' is registered twice" in message and "dist-a" in message and "dist-b" in message
    assert not lorakit_pm.has_plugin("b")


def test_registry_rejects_wrong_spec_type_and_suggests_names(lorakit_pm):
    class Wrong:
        @hookimpl
        def lorakit_register_metrics(self, register):
            register(BackboneSpec(name="x", load_model=print, load_tokenizer=print))

    lorakit_pm.register_plugin(Wrong(), "wrong")
    reports: list[str] = []
    lorakit_pm.report = reports.append
    assert len(Plugins(lorakit_pm).metrics()) == 0
    assert reports == [
        'Error loading plugin "wrong" (unknown distribution): '
        "registered a BackboneSpec as metrics; expected MetricSpec"
    ]


def test_unknown_name_suggests_and_names_provider(lorakit_plugins):
    with pytest.raises(PluginError) as info:
        lorakit_plugins.backbones().get("roberta")
    assert "pip install lorakit-roberta" in str(info.value)


def test_selection_hooks_are_firstresult(lorakit_pm):
    class Fake:
        @hookimpl
        def lorakit_detect_devices(self):
            return [Device(index=0, name="Fake GPU", total_mb=1000, free_mb=900)]

        @hookimpl
        def lorakit_resolve_backbone(self, model_config):
            return "mine" if model_config == "x" else None

    lorakit_pm.register_plugin(Fake(), "fake")
    plugins = Plugins(lorakit_pm)
    assert plugins.detect_devices()[0].free_mb == 900
    assert plugins.resolve_backbone("x") == "mine"
    assert plugins.resolve_backbone("y") is None


def test_event_hooks_reach_plugins(lorakit_pm):
    seen = []

    class Tracker:
        @hookimpl
        def lorakit_on_run_start(self, exp_id, config, output_dir):
            seen.append(("start", exp_id))

        @hookimpl
        def lorakit_on_epoch_end(self, exp_id, epoch, metrics):
            seen.append(("epoch", epoch, metrics["avg_f1"]))

        @hookimpl
        def lorakit_on_run_end(self, exp_id, status):  # fewer arguments than the spec is allowed
            seen.append(("end", status))

    lorakit_pm.register_plugin(Tracker(), "tracker")
    plugins = Plugins(lorakit_pm)
    plugins.on_run_start(exp_id="e", config={}, output_dir="o")
    plugins.on_epoch_end(exp_id="e", epoch=1, metrics={"avg_f1": 0.5})
    plugins.on_run_end(exp_id="e", status="completed", metrics={}, output_dir="o")
    assert seen == [("start", "e"), ("epoch", 1, 0.5), ("end", "completed")]


def test_unknown_hook_name_is_refused_with_a_suggestion(lorakit_pm):
    class Typo:
        @hookimpl
        def lorakit_register_metricz(self, register):
            pass

    with pytest.raises(
        PluginError, match=r"unknown hook lorakit_register_metricz \(did you mean lorakit_register_metrics"
    ):
        lorakit_pm.register_plugin(Typo(), "typo")
    assert not lorakit_pm.has_plugin("typo")
    lorakit_pm.check_pending()  # nothing left behind that pluggy would complain about


def test_hook_wrappers_are_refused_at_load_time(lorakit_pm):
    class Wrapper:
        @hookimpl(wrapper=True)
        def lorakit_on_epoch_end(self, exp_id):
            return (yield)

    with pytest.raises(PluginError, match="lorakit_on_epoch_end: hook wrappers are not supported"):
        lorakit_pm.register_plugin(Wrapper(), "wrapper")
    assert not lorakit_pm.has_plugin("wrapper")


def test_registration_hooks_follow_pluggys_argument_rules(lorakit_pm):
    seen = []

    class NoArguments:  # an implementation may take fewer arguments than the hook offers
        @hookimpl
        def lorakit_register_metrics(self):
            seen.append("called")

    lorakit_pm.register_plugin(NoArguments(), "none")
    assert len(Plugins(lorakit_pm).metrics()) == 0 and seen == ["called"]


def test_trace_plugins_logs_every_hook_call(cli):
    result = cli("devices", env={"LORAKIT_TRACE_PLUGINS": "1"})
    assert result.returncode == 0, result.stderr
    assert "lorakit-trace:   lorakit_detect_devices [hook]" in result.stderr
    assert "finish lorakit_detect_devices -->" in result.stderr
