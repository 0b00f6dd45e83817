"""lorakit-roberta, installed: found through its entry point, trains and predicts on a tiny random RoBERTa.

Runs where the package is installed (``nox -s plugins``); fixtures come from ``lorakit.testing``.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorakit import Experiment
from lorakit.testing import make_tiny_roberta

VERSION = importlib.metadata.version("lorakit-roberta")
RISK = ["低风险", "中风险", "高风险"]


def lorakit(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real ``lorakit`` command, loading plugins from entry points like a user's shell would."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "lorakit", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def config(tmp_path: Path, tiny_roberta: Path, synthetic_df) -> Path:
    """A single-label config on the tiny RoBERTa. No model.backbone: the plugin's resolve hook picks it."""
    synthetic_df.to_csv(tmp_path / "train.csv", index=False)
    path = tmp_path / "roberta.toml"
    path.write_text(
        "\n".join(
            [
                'exp_id = "tiny_roberta"',
                "[data]",
                'raw_data_path = "train.csv"',
                f"label_subset = {json.dumps(RISK, ensure_ascii=False)}",
                f'cache_dir = "{(tmp_path / "cache").as_posix()}"',
                "max_len = 32",
                "val_ratio = 0.25",
                "[model]",
                f'arch = "{tiny_roberta.as_posix()}"',
                "[model.lora]",
                "rank = 4",
                "alpha = 8",
                "[train]",
                "batch_size = 16",
                "lr = 5e-3",
                "epochs = 2",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return path


def test_plugins_json_lists_the_package_with_its_version():
    proc = lorakit("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout) if r["name"] == "roberta"]
    assert row["distribution"] == "lorakit-roberta" and row["version"] == VERSION
    assert row["kind"] == "external" and row["error"] is None
    assert row["registered"] == {"backbones": ["roberta"]}
    assert "lorakit_resolve_backbone" in row["hooks"]
    text = lorakit("plugins").stdout
    assert f"roberta (lorakit-roberta {VERSION}, external)" in text


def test_resolves_roberta_and_xlm_roberta(lorakit_plugins_factory, tmp_path: Path):
    import transformers

    plugins = lorakit_plugins_factory("roberta")
    for model_type in ("roberta", "xlm-roberta"):
        directory = make_tiny_roberta(tmp_path / model_type, model_type=model_type)
        config = transformers.AutoConfig.from_pretrained(directory)
        assert plugins.resolve_backbone(config) == "roberta"
        encoder = plugins.backbones().get("roberta").load_model(str(directory))
        assert encoder.config.model_type == model_type and encoder.pooler is None
    assert plugins.resolve_backbone(transformers.BertConfig()) == "bert"


def test_trains_with_the_cli_and_predicts(config: Path, tmp_path: Path, lorakit_plugins_factory):
    import torch

    outputs = tmp_path / "outputs"
    proc = lorakit("train", str(config), "--outputs", str(outputs))
    assert proc.returncode == 0, proc.stderr
    folder = outputs / "tiny_roberta"
    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "completed"
    meta = json.loads((folder / "lora_adapter" / "heads.json").read_text(encoding="utf-8"))
    assert (meta["backbone"], meta["target_modules"], meta["pooling"]) == (
        "roberta",
        ["query", "value"],
        "cls",
    )
    env = json.loads((folder / "env_info.json").read_text(encoding="utf-8"))
    assert VERSION in env["plugins"]["roberta"]

    lorakit_plugins_factory("roberta")
    predictor = Experiment.load("tiny_roberta", outputs=outputs)
    (row,) = predictor.predict(["该客户多次逾期未还，建议驳回。"])
    assert list(row["label"]["probabilities"]) == RISK
    assert sum(row["label"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    # "cls" pooling reads the <s> token at position 0
    tok = predictor.model.tokenizer
    enc = tok(["还款按时。"], return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tok.cls_token_id == tok.convert_tokens_to_ids("<s>")
    classifier = predictor.model.classifier
    with torch.no_grad():
        first = classifier.encoder(**enc).last_hidden_state[:, 0]
        assert torch.allclose(classifier.heads["t0"](first), classifier(**enc)[0], atol=1e-6)


def test_missing_backbone_names_the_package(config: Path, tmp_path: Path):
    # As if the package were uninstalled: the blocklist hides its entry point.
    forced = config.with_name("forced.toml")
    forced.write_text(
        config.read_text(encoding="utf-8").replace("[model]\n", '[model]\nbackbone = "roberta"\n'),
        encoding="utf-8",
    )
    proc = lorakit(
        "train", str(forced), "--outputs", str(tmp_path / "out"), env={"LORAKIT_DISABLE_PLUGINS": "roberta"}
    )
    assert proc.returncode == 2
    assert "unknown backbone 'roberta'" in proc.stderr and "pip install lorakit-roberta" in proc.stderr
