"""lorakit-ordinal, installed: the CORAL loss against a hand computation, the head's probabilities, and a
double-label run (ordinal risk_level + linear is_adopt) trained and predicted on a tiny random BERT.

Runs where the package is installed (``nox -s plugins``); fixtures come from ``lorakit.testing``.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import lorakit_ordinal
import pytest
import torch

from lorakit import Experiment
from lorakit.errors import ConfigError

VERSION = importlib.metadata.version("lorakit-ordinal")
RISK = ["低风险", "中风险", "高风险"]


def lorakit(*args: str) -> subprocess.CompletedProcess:
    """The real ``lorakit`` command, loading plugins from entry points like a user's shell would."""
    return subprocess.run(
        [sys.executable, "-m", "lorakit", *args], capture_output=True, text=True, timeout=600
    )


def test_plugins_json_lists_the_package_with_its_version():
    proc = lorakit("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout) if r["name"] == "ordinal"]
    assert row["distribution"] == "lorakit-ordinal" and row["version"] == VERSION
    assert row["registered"] == {"losses": ["coral"], "task_heads": ["ordinal"]}


def test_coral_loss_by_hand():
    # K = 3: two logits per row, for "y > 0?" and "y > 1?". BCE(z, 1) = ln(1 + e^-z), BCE(z, 0) = ln(1 + e^z).
    #   row 0: z = (0, 0),  y = 1 → targets (1, 0): ln 2 + ln 2                     = 1.3862944
    #   row 1: z = (2, -1), y = 2 → targets (1, 1): 0.1269280 + 1.3132617           = 1.4401897
    #   loss = (1.3862944 + 1.4401897) / 2                                          = 1.4132420
    loss = lorakit_ordinal.build_coral(num_labels=3)
    assert loss(torch.tensor([[0.0, 0.0], [2.0, -1.0]]), torch.tensor([1, 2])).item() == pytest.approx(
        1.4132420, abs=1e-6
    )
    # y = 0 → targets (0, 0): ln(1 + e^0) + ln(1 + e^0) = 2 ln 2; a -100 row changes nothing
    value = loss(torch.tensor([[0.0, 0.0], [9.0, 9.0]]), torch.tensor([0, -100]))
    assert value.item() == pytest.approx(1.3862944, abs=1e-6)
    with pytest.raises(ConfigError, match="unknown option for loss 'coral'"):
        lorakit_ordinal.build_coral(num_labels=3, label_smoothing=0.1)


def test_probabilities_are_ordered_class_probabilities():
    probs = lorakit_ordinal.probabilities(torch.tensor([[2.0, -1.0], [-1.0, 2.0]]))
    # s(2) = 0.8807971, s(-1) = 0.2689414 → (1 - 0.8807971, 0.8807971 - 0.2689414, 0.2689414)
    assert probs[0].tolist() == pytest.approx([0.1192029, 0.6118557, 0.2689414], abs=1e-6)
    # s(-1) < s(2): the middle class would be negative; it is clamped to 0 and the row renormalised
    assert probs[1].tolist() == pytest.approx([0.4535509, 0.0, 0.5464491], abs=1e-6)


def test_head_and_loss_learn_an_ordered_target():
    # Features on a line, classes by thresholds on it: what CORAL is for. Learning it must order the
    # thresholds (rank consistency) and classify almost every row right.
    torch.manual_seed(0)
    x = torch.randn(300, 4)
    score = x @ torch.tensor([1.0, -0.5, 0.25, 0.0])
    y = (score > -0.5).long() + (score > 0.5).long()  # 0 < 1 < 2
    head = lorakit_ordinal.build_head(4, 3, {"dropout": 0.0})
    loss = lorakit_ordinal.build_coral(num_labels=3)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(60):
        optimizer.zero_grad()
        loss(head(x), y).backward()
        optimizer.step()
    assert head.thresholds[0] > head.thresholds[1]
    predicted = lorakit_ordinal.probabilities(head(x)).argmax(1)
    assert (predicted == y).float().mean() > 0.9


def test_double_label_with_ordinal_risk_trains_and_predicts(
    tmp_path: Path, tiny_bert: Path, lorakit_plugins_factory
):
    from lorakit.testing import synthetic_frame

    synthetic_frame(160, seed=3).to_csv(tmp_path / "train.csv", index=False)
    config = tmp_path / "ordinal.toml"
    config.write_text(
        f"""exp_id = "tiny_ordinal"
[data]
raw_data_path = "train.csv"
cache_dir = "{(tmp_path / "cache").as_posix()}"
max_len = 32
val_ratio = 0.25
[data.label_subset]
risk_level = ["低风险", "中风险", "高风险"]
is_adopt = ["采纳", "不采纳"]
[model]
arch = "{tiny_bert.as_posix()}"
[model.heads.risk_level]
type = "ordinal"
[model.lora]
rank = 4
alpha = 8
[train]
batch_size = 16
lr = 5e-3
epochs = 2
""",
        encoding="utf-8",
    )
    outputs = tmp_path / "outputs"
    proc = lorakit("train", str(config), "--outputs", str(outputs))
    assert proc.returncode == 0, proc.stderr
    folder = outputs / "tiny_ordinal"
    meta = json.loads((folder / "lora_adapter" / "heads.json").read_text(encoding="utf-8"))
    assert [(t["name"], t["head"], t["loss"]) for t in meta["tasks"]] == [
        ("risk_level", "ordinal", "coral"),
        ("is_adopt", "linear", "cross_entropy"),
    ]
    best = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["best"]
    assert 0 <= best["risk_level_f1"] <= 1 and 0 <= best["is_adopt_f1"] <= 1

    lorakit_plugins_factory("ordinal")
    rows = Experiment.load("tiny_ordinal", outputs=outputs).predict(
        ["该客户多次逾期未还，建议驳回。", "还款按时。"]
    )
    for row in rows:
        probs = row["risk_level"]["probabilities"]
        assert list(probs) == RISK
        assert all(p >= 0 for p in probs.values()) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
