"""Plugins own their options: a tuning method's ``[model.<method>]`` table, a head's options and a loss's
options (for every task or per task) are structured and checked by the plugin's own attrs class, with
the core's ``key: problem (file)`` errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import attrs
import pytest
from battery_harness import lorakit
from test_battery_cli import install_plugin

from lorakit import hookimpl
from lorakit.config.schema import load_config, to_dict
from lorakit.errors import ConfigError
from lorakit.modeling.plan import plan_model
from lorakit.specs import LossSpec, TaskHeadSpec

SCALED = textwrap.dedent(
    """
    import attrs
    from lorakit import hookimpl
    from lorakit.specs import TuningMethodSpec


    @attrs.define(kw_only=True, frozen=True)
    class ScaledOptions:
        factor: float = attrs.field(default=1.0, metadata={"doc": "how much the adapter scales"})
        target_modules: list[str] | None = None

        def problems(self, table):
            return [(f"{table}.factor", "must be > 0")] if self.factor <= 0 else []


    @hookimpl
    def lorakit_register_tuning_methods(register):
        register(
            TuningMethodSpec(
                name="scaled",
                apply=lambda model, targets, options: model,
                options=ScaledOptions,
                trainable_parameters=lambda layers, options: 0,
            )
        )
    """
)


def _config(root: Path, table: str) -> Path:
    path = root / "exp.toml"
    path.write_text(
        'exp_id = "exp"\n[data]\nraw_data_path = "train.csv"\nlabel_subset = ["a", "b"]\n'
        f'[model]\narch = "x"\nmethod = "scaled"\n[model.scaled]\n{table}\n',
        encoding="utf-8",
    )
    return path


def test_an_inline_plugin_owns_its_tuning_table(tmp_path: Path):
    site = install_plugin(tmp_path / "site", "scaled", SCALED)
    path = _config(tmp_path, "factor = 2.5")
    result = lorakit("config", "show", str(path), path=[site])
    assert result.code == 0, result
    assert "[model.scaled]\nfactor = 2.5" in result.out
    assert "[model.lora]\nrank = 8" in result.out  # the built-ins' tables are there, with their defaults


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("factr = 2.5", "model.scaled.factr: unknown key (did you mean factor?) ({file})"),
        ('factor = "big"', "model.scaled.factor: expected a number, got str 'big' ({file})"),
        ("factor = -1.0", "model.scaled.factor: must be > 0 ({file})"),
    ],
)
def test_an_inline_plugins_option_errors_read_like_the_cores(tmp_path: Path, table: str, expected: str):
    site = install_plugin(tmp_path / "site", "scaled", SCALED)
    path = _config(tmp_path, table)
    result = lorakit("config", "show", str(path), path=[site])
    assert result.code == 2, result
    assert "Traceback" not in result.err
    assert any(line.endswith(expected.format(file=path)) for line in result.err_lines), result.err


def test_without_the_plugin_its_method_is_unknown_and_a_stray_table_an_unknown_key(tmp_path: Path):
    # the config names the method: the missing plugin is the news, not its table
    result = lorakit("config", "show", str(_config(tmp_path, "factor = 2.5")))
    assert result.code == 2, result
    assert "model.method: unknown tuning method 'scaled'" in result.err and "unknown key" not in result.err
    # a table of a method the config does not use, nobody registers: a typo, an unknown key
    path = _config(tmp_path, "factor = 2.5")
    path.write_text(path.read_text(encoding="utf-8").replace('method = "scaled"', 'method = "lora"'), "utf-8")
    result = lorakit("config", "show", str(path))
    assert result.code == 2 and "model.scaled: unknown key" in result.err, result


# ---- head and loss options, in-process ------------------------------------------------------------------


@attrs.define(kw_only=True, frozen=True)
class WideOptions:
    width: int = attrs.field(default=4, metadata={"doc": "inner width"})


@attrs.define(kw_only=True, frozen=True)
class WeightedOptions:
    class_weights: list[float] | None = None
    temperature: float = 1.0

    def problems(self, table):
        return [(f"{table}.temperature", "must be > 0")] if self.temperature <= 0 else []


class OptionPlugins:
    @hookimpl
    def lorakit_register_task_heads(self, register):
        register(TaskHeadSpec(name="wide", build=lambda h, n, o: None, options=WideOptions))

    @hookimpl
    def lorakit_register_losses(self, register):
        register(LossSpec(name="weighted", build=lambda num_labels, **o: None, options=WeightedOptions))


@pytest.fixture
def option_plugins(lorakit_plugins_factory):
    return lorakit_plugins_factory(OptionPlugins())


def _two_tasks(**model_train):
    return {
        "exp_id": "opts",
        "data": {"raw_data_path": "t.csv", "label_subset": {"risk": ["a", "b", "c"], "adopt": ["y", "n"]}},
        "model": {"arch": "x", "backbone": "bert", "head": "wide", **model_train.get("model", {})},
        "train": {"loss": "weighted", **model_train.get("train", {})},
    }


def _problems(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return info.value.lines()


def test_loss_options_per_task_over_shared_ones(option_plugins):
    options = {
        "temperature": 2.0,
        "risk": {"class_weights": [1.0, 2.0, 3.0]},
        "adopt": {"class_weights": [1.0, 4.0]},
    }
    cfg, _ = load_config(_two_tasks(train={"loss_options": options}))
    plan = plan_model(cfg, {"risk": 3, "adopt": 2}, option_plugins)
    risk, adopt = plan.tasks
    assert risk.loss_options == {"class_weights": [1.0, 2.0, 3.0], "temperature": 2.0}
    assert adopt.loss_options == {"class_weights": [1.0, 4.0], "temperature": 2.0}
    assert to_dict(cfg)["train"]["loss_options"] == options  # recorded as written


def test_loss_option_errors_name_the_table_that_set_them(option_plugins):
    options = {"temprature": 2.0, "adopt": {"temperature": -1.0, "weights": [1.0]}}
    lines = _problems(_two_tasks(train={"loss_options": options}))
    assert "train.loss_options.temprature: unknown key (did you mean temperature?) (<dict>)" in lines
    assert "train.loss_options.adopt.weights: unknown key (did you mean class_weights?) (<dict>)" in lines
    assert "train.loss_options.adopt.temperature: must be > 0 (<dict>)" in lines
    assert len(lines) == len(set(lines))  # a shared key's problem is reported once, not once per task


def test_head_options_for_every_task_and_per_task(option_plugins):
    model = {"head_options": {"width": 8}, "heads": {"adopt": {"options": {"width": 2}}}}
    cfg, _ = load_config(_two_tasks(model=model))
    plan = plan_model(cfg, {"risk": 3, "adopt": 2}, option_plugins)
    assert [t.head_options["width"] for t in plan.tasks] == [8, 2]
    assert plan.tasks[0].head_options["dropout"] == 0.1  # the core's options are there too
    bad = {"head_options": {"widht": 8}, "heads": {"adopt": {"options": {"width": "2"}}}}
    lines = _problems(_two_tasks(model=bad))
    assert "model.head_options.widht: unknown key (did you mean width?) (<dict>)" in lines
    assert "model.heads.adopt.options.width: expected an integer, got str '2' (<dict>)" in lines
