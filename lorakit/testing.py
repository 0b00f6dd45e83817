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


# ---- tiny models and synthetic data ----------------------------------------------------------------

RISK_PHRASES = {
    "低风险": ["信用记录良好", "还款按时", "资料齐全", "流水稳定", "抵押充足"],
    "中风险": ["收入有波动", "资料略有缺失", "近期有一次逾期", "负债率偏高", "经营时间较短"],
    "高风险": ["多次逾期未还", "涉及诉讼纠纷", "资金去向不明", "身份信息存疑", "频繁更换账户"],
}
ADOPT_PHRASES = {
    "采纳": ["建议通过", "同意审批", "可以放款", "批准执行"],
    "不采纳": ["建议驳回", "暂缓处理", "需要补充材料", "不予通过"],
}
CHANNEL_PHRASES = {"线上": ["通过手机提交", "网页申请"], "线下": ["柜台办理", "网点递交"]}
SUBJECTS = ["这笔贷款", "该客户", "这份合同", "本次交易", "这个账户", "该供应商", "此项投资", "这张订单"]
ENGLISH_WORDS = [
    "the",
    "a",
    "good",
    "bad",
    "great",
    "terrible",
    "car",
    "cars",
    "self",
    "driving",
    "trust",
    "love",
    "hate",
    "never",
    "ever",
    "ok",
    "fine",
    "not",
]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def synthetic_rows(n: int, *, seed: int = 0, tasks: int = 2) -> list[dict[str, object]]:
    """Labelled Chinese review sentences whose labels are learnable from their words.

    Columns: text, risk_level (低/中/高风险), is_adopt (采纳/不采纳), channel (线上/线下, with ``tasks=3``),
    risk_score (a number in [0, 1] that bins back to risk_level), and label (= risk_level).
    """
    import random

    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for _ in range(n):
        risk = rng.choice(list(RISK_PHRASES))
        adopt = "采纳" if (risk == "低风险") ^ (rng.random() < 0.2) else "不采纳"
        parts = [rng.choice(SUBJECTS), rng.choice(RISK_PHRASES[risk])]
        if rng.random() < 0.5:
            parts.append("，并且" + rng.choice(RISK_PHRASES[risk]))
        parts.append("，" + rng.choice(ADOPT_PHRASES[adopt]))
        row: dict[str, object] = {}
        if tasks >= 3:
            channel = rng.choice(list(CHANNEL_PHRASES))
            parts.append("，" + rng.choice(CHANNEL_PHRASES[channel]))
            row["channel"] = channel
        score = {"低风险": 0.15, "中风险": 0.5, "高风险": 0.85}[risk] + rng.uniform(-0.14, 0.14)
        row.update(
            text="".join(parts) + "。",
            risk_level=risk,
            is_adopt=adopt,
            risk_score=round(score, 3),
            label=risk,
        )
        rows.append(row)
    return rows


def synthetic_frame(n: int = 120, *, seed: int = 0, tasks: int = 2):  # -> pandas.DataFrame
    """:func:`synthetic_rows` as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(synthetic_rows(n, seed=seed, tasks=tasks))


def tiny_vocab() -> list[str]:
    """Special tokens, every character of the synthetic corpus, a few English words, ASCII letters."""
    chars: set[str] = set()
    for group in (RISK_PHRASES, ADOPT_PHRASES, CHANNEL_PHRASES):
        for label, phrases in group.items():
            chars.update(label)
            for phrase in phrases:
                chars.update(phrase)
    for subject in SUBJECTS:
        chars.update(subject)
    chars.update("，。；！？并且经审核综合来看")
    return SPECIAL_TOKENS + sorted(chars) + ENGLISH_WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?")


def _bert_tokenizer(vocab: list[str], directory: str):
    import os

    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return transformers.BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as fh:
        fh.write("\n".join(vocab) + "\n")
    return transformers.BertTokenizerFast(vocab_file=vocab_file)


def make_tiny_bert(directory, *, seed: int = 0, hidden_size: int = 32, layers: int = 2, heads: int = 2):
    """Save a tiny random BERT encoder and its fast tokenizer in ``directory``; returns the Path."""
    from pathlib import Path

    import torch
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    _bert_tokenizer(vocab, str(directory)).save_pretrained(directory)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    transformers.BertModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory):
    """Path of a tiny random BERT (2 layers, hidden 32) with a Chinese-capable tokenizer, built once per session."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def synthetic_df():
    """A small labelled frame (120 rows; text, risk_level, is_adopt, risk_score, label)."""
    return synthetic_frame()
