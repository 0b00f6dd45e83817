"""Backbones (bert, ernie, auto), tuning methods (lora, dora, ia3) and target-module detection."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_train import outputs, project  # noqa: F401  (fixture)

from lorakit import Experiment
from lorakit.errors import PluginError
from lorakit.modeling.targets import detect_attention_modules
from lorakit.plugins import get_plugins


def save_tiny(config, tiny_bert: Path, directory: Path) -> Path:
    """Save a tiny random model of another family next to the tiny BERT's tokenizer files."""
    import torch
    import transformers

    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_bert / name).exists():
            shutil.copy(tiny_bert / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def tiny_ernie(tiny_bert: Path, tmp_path_factory) -> Path:
    import transformers

    config = transformers.ErnieConfig(
        vocab_size=transformers.AutoConfig.from_pretrained(tiny_bert).vocab_size,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip
    return save_tiny(config, tiny_bert, tmp_path_factory.mktemp("tiny-ernie"))


@pytest.fixture(scope="module")
def tiny_distilbert(tiny_bert: Path, tmp_path_factory) -> Path:
    import transformers

    config = transformers.DistilBertConfig(
        vocab_size=transformers.AutoConfig.from_pretrained(tiny_bert).vocab_size,
        dim=32, n_layers=2, n_heads=2, hidden_dim=64,
    )  # fmt: skip
    return save_tiny(config, tiny_bert, tmp_path_factory.mktemp("tiny-distilbert"))


def test_resolution_by_model_type(tiny_bert: Path, tiny_ernie: Path, tiny_distilbert: Path):
    import transformers

    plugins = get_plugins()
    pick = lambda path: plugins.resolve_backbone(transformers.AutoConfig.from_pretrained(path))  # noqa: E731
    assert pick(tiny_bert) == "bert"
    assert pick(tiny_ernie) == "ernie"
    assert pick(tiny_distilbert) == "auto"  # nobody claims distilbert: the auto fallback answers last
    assert plugins.backbones().get("ernie").target_modules == ("query", "key", "value")


def test_auto_detects_attention_projections(tiny_distilbert: Path):
    import torch
    import transformers

    assert detect_attention_modules(transformers.AutoModel.from_pretrained(tiny_distilbert)) == [
        "q_lin",
        "v_lin",
    ]

    class NoAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dense_in = torch.nn.Linear(4, 4)
            self.dense_out = torch.nn.Linear(4, 2)

    with pytest.raises(PluginError) as info:
        detect_attention_modules(NoAttention())
    assert "dense_in, dense_out" in str(info.value) and "model.lora.target_modules" in str(info.value)


@pytest.mark.parametrize(
    ("arch", "extra"),
    [
        ("ernie", []),
        ("distilbert", []),
        ("bert", ["model.method=dora"]),
        ("bert", ["model.method=ia3", 'model.ia3.target_modules=["query", "value", "output.dense"]',
                  'model.ia3.feedforward_modules=["output.dense"]']),
        ("bert", ["model.head=mlp", "model.head_hidden_size=16", "train.loss=focal"]),
    ],
)  # fmt: skip
def test_backbones_and_methods_train(project, tiny_bert, tiny_ernie, tiny_distilbert, arch, extra):  # noqa: F811
    path = {"bert": tiny_bert, "ernie": tiny_ernie, "distilbert": tiny_distilbert}[arch]
    config = project(f"bb_{arch}_{len(extra)}", tasks=2, epochs=1)
    result = Experiment(config, [f'model.arch="{path.as_posix()}"', *extra], outputs=outputs(project)).run(
        echo=False
    )
    assert result.status == "completed"
    (row,) = Experiment.load(result.output_dir).predict(["该客户信用记录良好，建议通过。"])
    assert set(row) == {"risk_level", "is_adopt"}
