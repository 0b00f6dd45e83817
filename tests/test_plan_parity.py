"""One model plan: ``lorakit estimate`` counts the trainable parameters training builds, for every
shipped config (on the tiny models; the ROBERTa and ordinal configs with their plugin packages loaded
from source, as tests/test_plugin_packages.py does)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_plugin_packages import REPO, plugin_module

from lorakit.config.schema import load_config
from lorakit.modeling.build import build_classifier, load_backbone_encoder, plan_model
from lorakit.modeling.plan import config_label_counts
from lorakit.scheduling.estimate import count_parameters
from lorakit.testing import tiny_overrides

CONFIGS = sorted((REPO / "configs").glob("*.toml"))
PLUGIN_PACKAGES = {
    "exp_v6_roberta.toml": "lorakit-roberta",
    "exp_v7_ordinal.toml": "lorakit-ordinal",
    "exp_v8_lora_adapter.toml": "lorakit-adapters",
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("extra", [[], ["model.method='dora'"], ["model.method='ia3'"], ["model.head='mlp'"]])
def test_estimate_counts_what_training_builds(
    path: Path, extra: list[str], tiny_bert, tiny_roberta, tmp_path, lorakit_plugins_factory
):
    package = PLUGIN_PACKAGES.get(path.name)
    plugins = lorakit_plugins_factory(*([plugin_module(package)] if package else []))
    arch = tiny_roberta if package == "lorakit-roberta" else tiny_bert
    cfg, _ = load_config(path, [*tiny_overrides(arch, tmp_path / "cache"), *extra])
    estimated = count_parameters(cfg, plugins)["trainable"]
    _, encoder = load_backbone_encoder(cfg, plugins)
    plan = plan_model(cfg, config_label_counts(cfg), plugins, encoder)
    model = build_classifier(plan, encoder, plugins, seed=0)
    built = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimated == built


@pytest.mark.parametrize(
    "extra",
    [
        ["model.bottleneck.placement='houlsby'"],
        ["model.method='bottleneck'", "model.bottleneck.reduction_factor=4"],
        ["model.method=['dora', 'bottleneck']", "model.bottleneck.target_modules=['intermediate.dense']"],
    ],
)
def test_estimate_counts_each_part_of_a_combination(
    extra: list[str], tiny_bert, tmp_path, lorakit_plugins_factory
):
    from lorakit.modeling.build import tuning_record
    from lorakit.scheduling.estimate import method_parameters

    plugins = lorakit_plugins_factory(plugin_module("lorakit-adapters"))
    overrides = [*tiny_overrides(tiny_bert, tmp_path / "cache"), *extra]
    cfg, _ = load_config(REPO / "configs" / "exp_v8_lora_adapter.toml", overrides)
    _, encoder = load_backbone_encoder(cfg, plugins)
    plan = plan_model(cfg, config_label_counts(cfg), plugins, encoder)
    model = build_classifier(plan, encoder, plugins, seed=0)
    built = {t["method"]: t["trainable_params"] for t in tuning_record(plan, model)}
    import torch
    import transformers

    with torch.device("meta"):
        meta = transformers.AutoModel.from_config(encoder.config)
    assert method_parameters(plan, meta) == built
    assert all(count > 0 for count in built.values())


def test_the_plan_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, lorakit.modeling.plan; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
