"""The plugin packages under plugins/, loaded from their source into fresh managers (not installed).

Their own tests (plugins/*/tests, run by ``nox -s plugins``) cover them installed, through entry points.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lorakit import Experiment
from lorakit.errors import ConfigError, PluginError
from lorakit.plugins import Plugins
from lorakit.testing import load_builtins, tiny_overrides

REPO = Path(__file__).resolve().parent.parent
RISK = ["低风险", "中风险", "高风险"]


def plugin_module(package: str) -> ModuleType:
    """Import ``plugins/<package>/<module>.py`` the way an installed package would be imported."""
    source = REPO / "plugins" / package
    if str(source) not in sys.path:
        sys.path.insert(0, str(source))
    return importlib.import_module(package.replace("-", "_"))


@pytest.fixture(scope="module")
def roberta() -> ModuleType:
    return plugin_module("lorakit-roberta")


@pytest.fixture(scope="module")
def ordinal() -> ModuleType:
    return plugin_module("lorakit-ordinal")


def small(arch: Path, tmp_path: Path, epochs: int = 2) -> list[str]:
    """The shipped config's data, labels and loss weights, on a tiny model."""
    return tiny_overrides(arch, tmp_path / "cache", epochs=epochs)


def heads_json(folder: Path) -> dict:
    return json.loads((folder / "lora_adapter" / "heads.json").read_text(encoding="utf-8"))


# ---- lorakit-roberta ---------------------------------------------------------------------------------


def test_roberta_registers_with_distribution_and_resolves_model_types(lorakit_pm, roberta):
    import transformers

    load_builtins(lorakit_pm)
    lorakit_pm.register_plugin(roberta, "roberta", "lorakit-roberta", "0.1.0")
    plugins = Plugins(lorakit_pm)
    spec = plugins.backbones().get("roberta")
    assert spec.model_types == ("roberta", "xlm-roberta")
    assert spec.target_modules == ("query", "value") and spec.pooling == "cls"
    assert plugins.backbones().source("roberta").distribution == "lorakit-roberta"
    # firstresult: the plugin answers for its model types before the built-in `auto` (trylast) does
    assert plugins.resolve_backbone(transformers.RobertaConfig()) == "roberta"
    assert plugins.resolve_backbone(transformers.XLMRobertaConfig()) == "roberta"
    assert plugins.resolve_backbone(transformers.BertConfig()) == "bert"
    assert plugins.resolve_backbone(transformers.DistilBertConfig()) == "auto"
    (row,) = [r for r in plugins.describe() if r["name"] == "roberta"]
    assert row["version"] == "0.1.0" and row["registered"] == {"backbones": ["roberta"]}
    assert "lorakit_resolve_backbone" in row["hooks"]


def test_tiny_roberta_fixture_loads_with_auto_classes(tiny_roberta):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_roberta)
    model = transformers.AutoModel.from_pretrained(tiny_roberta, add_pooling_layer=False)
    assert model.config.model_type == "roberta" and model.config.hidden_size == 32
    assert (tok.cls_token, tok.sep_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    ids = tok(["该客户多次逾期未还。"])["input_ids"][0]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert len(ids) == len("该客户多次逾期未还。") + 2  # one token per character


def test_roberta_config_trains_on_tiny_roberta(tiny_roberta, tmp_path, lorakit_plugins_factory, roberta):
    lorakit_plugins_factory(roberta)
    outputs = tmp_path / "outputs"
    result = Experiment(
        REPO / "configs" / "exp_v6_roberta.toml", small(tiny_roberta, tmp_path), outputs=outputs
    ).run(echo=False)
    meta = heads_json(result.output_dir)
    assert meta["backbone"] == "roberta" and meta["target_modules"] == ["query", "value"]
    assert meta["pooling"] == "cls"
    assert 0 <= result.best["label_f1"] <= 1
    (row,) = Experiment.load("exp_v6_roberta", outputs=outputs).predict(["该客户信用记录良好。"])
    assert list(row["label"]["probabilities"]) == RISK
    assert sum(row["label"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_roberta_config_without_the_plugin_names_the_package(cli, tmp_path):
    # As if lorakit-roberta were not installed (it is not in this venv; the blocklist makes sure).
    proc = cli(
        "train",
        str(REPO / "configs" / "exp_v6_roberta.toml"),
        "--outputs",
        str(tmp_path / "outputs"),
        env={"LORAKIT_DISABLE_PLUGINS": "roberta"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "unknown backbone 'roberta'" in lines[0] and "pip install lorakit-roberta" in lines[0]
    assert not (tmp_path / "outputs" / "exp_v6_roberta").exists()


# ---- lorakit-ordinal ---------------------------------------------------------------------------------


def test_coral_loss_matches_a_hand_computation(ordinal):
    import torch

    # K = 3 classes, so 2 logits per row answering "y > 0?" and "y > 1?"; BCE(z, 1) = ln(1 + e^-z),
    # BCE(z, 0) = ln(1 + e^z).
    #   row 0: z = (0, 0),  y = 1 → targets (1, 0): ln 2 + ln 2                    = 1.3862944
    #   row 1: z = (2, -1), y = 2 → targets (1, 1): ln(1 + e^-2) + ln(1 + e^1)
    #                                                = 0.1269280 + 1.3132617       = 1.4401897
    #   row 2: labelled -100, ignored
    #   loss = mean over labelled rows of the per-row sums = (1.3862944 + 1.4401897) / 2 = 1.4132420
    loss = ordinal.build_coral(num_labels=3)
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0], [5.0, 5.0]], requires_grad=True)
    value = loss(logits, torch.tensor([1, 2, -100]))
    assert value.item() == pytest.approx(1.4132420, abs=1e-6)
    assert value.item() == pytest.approx(
        (2 * math.log(2) + math.log1p(math.exp(-2)) + math.log1p(math.e)) / 2
    )
    value.backward()
    assert torch.all(logits.grad[2] == 0)  # the unlabelled row has no say
    # a batch without labels costs nothing, not NaN
    assert loss(logits, torch.tensor([-100, -100, -100])).item() == 0.0


def test_coral_rejects_options_and_non_ordinal_logits(ordinal):
    import torch

    with pytest.raises(ConfigError, match=r"train\.loss_options\.gamma: unknown option for loss 'coral'"):
        ordinal.build_coral(num_labels=3, gamma=2.0)
    with pytest.raises(ConfigError, match='type = "ordinal"'):
        ordinal.build_coral(num_labels=3)(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_ordinal_head_shapes_and_probabilities(ordinal):
    import torch

    head = ordinal.build_head(32, 3, {"dropout": 0.0, "hidden_size": None})
    logits = head(torch.randn(4, 32))
    assert logits.shape == (4, 2)
    assert sorted(n for n, _ in head.named_parameters()) == ["shared.weight", "thresholds"]  # w, K-1 biases
    assert head.thresholds.tolist() == pytest.approx([1.0, 0.5])  # ordered from the start
    assert ordinal.build_head(32, 3, {"dropout": 0.1, "hidden_size": 8})(torch.randn(2, 32)).shape == (2, 2)

    probs = ordinal.probabilities(torch.tensor([[0.0, 0.0], [2.0, -1.0], [-1.0, 2.0]]))
    # P(0) = 1 - s(z0), P(1) = s(z0) - s(z1), P(2) = s(z1)
    assert probs[0].tolist() == pytest.approx([0.5, 0.0, 0.5])
    assert probs[1].tolist() == pytest.approx([0.1192029, 0.6118557, 0.2689414], abs=1e-6)
    # unordered thresholds: P(1) would be negative → clamped to 0 and the rest renormalised
    assert probs[2].tolist() == pytest.approx([0.4535509, 0.0, 0.5464491], abs=1e-6)
    assert probs.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    # K = 2: one logit, P = (1 - s(z), s(z)) with s(0.3) = 0.5744425
    (two,) = ordinal.probabilities(torch.tensor([[0.3]])).tolist()
    assert two == pytest.approx([1 - 0.5744425, 0.5744425])


def test_ordinal_config_trains_and_predicts_ordered_classes(
    tiny_bert, tmp_path, lorakit_plugins_factory, ordinal
):
    plugins = lorakit_plugins_factory(ordinal)
    assert plugins.task_heads().get("ordinal").default_loss == "coral"
    outputs = tmp_path / "outputs"
    result = Experiment(
        REPO / "configs" / "exp_v7_ordinal.toml", small(tiny_bert, tmp_path), outputs=outputs
    ).run(echo=False)
    tasks = {t["name"]: (t["head"], t["loss"]) for t in heads_json(result.output_dir)["tasks"]}
    assert tasks == {"risk_level": ("ordinal", "coral"), "is_adopt": ("linear", "cross_entropy")}
    assert 0 <= result.best["risk_level_f1"] <= 1 and 0 <= result.best["is_adopt_f1"] <= 1

    rows = Experiment.load("exp_v7_ordinal", outputs=outputs).predict(
        ["该客户多次逾期未还，建议驳回。", "还款按时。"]
    )
    for row in rows:
        probs = row["risk_level"]["probabilities"]
        assert list(probs) == RISK  # ordered low → high, as the labels are listed
        assert all(p >= 0 for p in probs.values()) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert row["risk_level"]["label"] == max(probs, key=probs.get)
        assert sum(row["is_adopt"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_ordinal_config_without_the_plugin_names_the_package(tiny_bert, tmp_path, builtin_plugins):
    experiment = Experiment(
        REPO / "configs" / "exp_v7_ordinal.toml", small(tiny_bert, tmp_path), outputs=tmp_path / "outputs"
    )
    with pytest.raises(PluginError, match=r"unknown task head 'ordinal'.*pip install lorakit-ordinal"):
        experiment.run(echo=False)
    assert not (tmp_path / "outputs" / "exp_v7_ordinal").exists()


# ---- lorakit.testing's plugin factory ----------------------------------------------------------------


def test_plugins_factory_holds_only_the_chosen_plugins(lorakit_plugins_factory, ordinal):
    from lorakit.plugins import get_plugins

    alone = lorakit_plugins_factory(ordinal, builtins=False)
    assert [info.name for info in alone.pm.infos()] == ["lorakit_ordinal"]
    assert list(alone.losses()) == ["coral"] and get_plugins() is alone
    picked = lorakit_plugins_factory("metrics", builtins=False)  # an entry point, with its distribution
    assert [(i.name, i.distribution) for i in picked.pm.infos()] == [("metrics", "lorakit")]
    with pytest.raises(LookupError, match="no-such-plugin"):
        lorakit_plugins_factory("no-such-plugin")


def test_a_loss_that_does_not_fit_its_head_is_a_config_error(
    tiny_bert, tmp_path, lorakit_plugins_factory, ordinal
):
    lorakit_plugins_factory(ordinal)
    overrides = [
        *small(tiny_bert, tmp_path),
        'model.heads.risk_level.type="linear"',
        'model.heads.risk_level.loss="coral"',
    ]
    experiment = Experiment(REPO / "configs" / "exp_v7_ordinal.toml", overrides, outputs=tmp_path / "outputs")
    with pytest.raises(ConfigError) as info:
        experiment.run(echo=False)
    (line,) = info.value.lines()
    assert line.startswith("model.heads.risk_level: head 'linear' and loss 'coral' do not fit together")
    assert not (tmp_path / "outputs" / "exp_v7_ordinal").exists()


# ---- lorakit-adapters --------------------------------------------------------------------------------


def test_lora_plus_bottleneck_trains_reloads_and_predicts(tiny_bert, tmp_path, lorakit_plugins_factory):
    # The package's own tests (installed, through the CLI) cover both placements, resume and the refusals;
    # this one keeps the core's combination path (two libraries, one folder) in the main suite.
    lorakit_plugins_factory(plugin_module("lorakit-adapters"))
    outputs = tmp_path / "outputs"
    overrides = [*small(tiny_bert, tmp_path), "model.bottleneck.placement='houlsby'"]
    result = Experiment(REPO / "configs" / "exp_v8_lora_adapter.toml", overrides, outputs=outputs).run(
        echo=False
    )
    adapter = result.output_dir / "lora_adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "bottleneck.safetensors").is_file()
    meta = heads_json(result.output_dir)
    assert [m["name"] for m in meta["methods"]] == ["lora", "bottleneck"] and meta[
        "method"
    ] == "lora+bottleneck"
    run = json.loads((result.output_dir / "run.json").read_text(encoding="utf-8"))
    assert [t["method"] for t in run["tuning"]] == ["lora", "bottleneck"]
    params = run["key_params"]
    assert params["trainable_params"] > params["lora_params"] + params["bottleneck_params"] > 0
    assert "logits match (largest difference 0" in (result.output_dir / "train.log").read_text(
        encoding="utf-8"
    )
    rows = Experiment.load("exp_v8_lora_adapter", outputs=outputs).predict(["该客户信用记录良好。"])
    assert sum(rows[0]["risk_level"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_adapter_config_without_the_plugin_names_the_package(cli, tmp_path):
    # lorakit-adapters is not installed in this venv: its table is no unknown key, its method is the news
    proc = cli(
        "train", str(REPO / "configs" / "exp_v8_lora_adapter.toml"), "--outputs", str(tmp_path / "out")
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "model.method: unknown tuning method 'bottleneck'" in lines[0]
    assert "pip install lorakit-adapters" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_method_outside_peft_must_say_how_its_weights_are_saved(lorakit_pm):
    from lorakit.hookspecs import hookimpl
    from lorakit.specs import TuningMethodSpec

    class Unsaveable:
        @hookimpl
        def lorakit_register_tuning_methods(self, register):
            register(TuningMethodSpec(name="mine", apply=lambda m, t, o: m, library="mylib"))

    load_builtins(lorakit_pm)
    lorakit_pm.register_plugin(Unsaveable(), "unsaveable")
    plugins = Plugins(lorakit_pm)
    assert "mine" not in plugins.tuning_methods() and "lora" in plugins.tuning_methods()
    (failure,) = [f for f in lorakit_pm.failures if f.name == "unsaveable"]
    assert "needs state_dict and load_state_dict" in failure.reason
