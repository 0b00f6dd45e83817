"""A pytest plugin for lorakit plugin authors (loaded automatically through the ``pytest11`` entry point).

Fixtures:

* ``lorakit_pm`` — a fresh :class:`lorakit.plugins.PluginManager` with *no* plugins; register yours.
* ``lorakit_plugins`` — :class:`lorakit.plugins.Plugins` over ``lorakit_pm``, installed as the
  process-wide plugins for the test (restored afterwards).
* ``builtin_plugins`` — a fresh manager with lorakit's own built-ins loaded from their entry points.
* ``lorakit_plugins_factory`` — ``factory(*modules_or_entry_point_names)``: a fresh manager with only the
  chosen plugins (plus the built-ins unless ``builtins=False``), active process-wide for the test.
* ``tiny_bert`` / ``tiny_roberta`` — session-scoped paths of tiny random encoders with tokenizers.
* ``synthetic_df`` — a small labelled frame of Chinese sentences.

Nothing here imports torch until a fixture that needs it runs.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator

import pytest

from .plugins import ENTRY_POINT_GROUP, PluginManager, Plugins, new_manager, set_plugins


def load_builtins(pm: PluginManager, *, only: set[str] | None = None) -> None:
    """Register lorakit's own entry-point plugins (optionally only the named ones) into ``pm``."""
    pm.load_entrypoints(core_only=True, only=only, strict=True)


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


def plugins_with(*chosen: object, builtins: bool = True) -> Plugins:
    """Typed plugins over a fresh manager holding only ``chosen`` (plus lorakit's built-ins if ``builtins``).

    Each item is an installed entry-point name of the ``lorakit`` group (registered with its distribution
    and version, as ``lorakit plugins`` would show it) or a plugin object/module registered as is (under
    its ``__name__``). The built-ins are on by default because nothing trains without their data
    sources, losses and metrics; pass ``builtins=False`` to test a plugin entirely on its own.
    """
    pm = new_manager(load_entrypoints=False)
    if builtins:
        load_builtins(pm)
    names = {item for item in chosen if isinstance(item, str)}
    points = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    missing = sorted(names - points)
    if missing:
        raise LookupError(f"no {ENTRY_POINT_GROUP!r} entry point named {missing[0]!r}; have {sorted(points)}")
    if names:
        pm.load_entrypoints(only=names, strict=True)
    for item in chosen:
        if not isinstance(item, str):
            name = getattr(item, "__name__", None) or type(item).__name__
            pm.register_plugin(item, name)
    pm.check_pending()
    return Plugins(pm)


@pytest.fixture
def lorakit_plugins_factory() -> Iterator[Callable[..., Plugins]]:
    """``factory(*modules_or_entry_point_names, builtins=True)`` → fresh :class:`Plugins` with only those.

    The last one made is active process-wide for the rest of the test (restored afterwards), so
    ``Experiment(...)`` and the CLI code running in-process use it.
    """
    previous = set_plugins(None)
    set_plugins(previous)  # only peeked: the process-wide plugins stay as they are until the factory runs

    def factory(*chosen: object, builtins: bool = True) -> Plugins:
        plugins = plugins_with(*chosen, builtins=builtins)
        set_plugins(plugins)
        return plugins

    try:
        yield factory
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
    return transformers.BertTokenizerFast(vocab_file=vocab_file)  # type: ignore[attr-defined]  # transformers < 5


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


def tiny_overrides(arch, cache_dir, *, epochs: int = 2) -> list[str]:
    """``--set``-style overrides that run any shipped config small: a tiny model, 160 rows, few epochs.

    The config keeps its own data, labels and loss weights; pass them to ``Experiment(config, overrides)``.
    """
    from pathlib import Path

    return [
        f'model.arch="{Path(arch).as_posix()}"',
        f'data.cache_dir="{Path(cache_dir).as_posix()}"',
        "data.max_rows=160",
        "data.max_len=32",
        "data.val_ratio=0.25",
        "model.lora.rank=4",
        "model.lora.alpha=8",
        "train.batch_size=16",
        "train.lr=5e-3",
        f"train.epochs={epochs}",
    ]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory):
    """Path of a tiny random BERT (2 layers, hidden 32) with a Chinese-capable tokenizer, built once per session."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


ROBERTA_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in roberta-base (pad = 1)


def _byte_level_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocab + merges that spell every multi-byte character of :func:`tiny_vocab` as one
    token (byte pair first, then + the third byte), so Chinese text is one token per character and
    anything else falls back to single bytes. Built by rule, not trained, so it is the same every time."""
    # GPT-2's byte → printable-unicode table, which byte-level BPE uses for its vocabulary.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    byte_char = {b: chr(b if b in printable else next(extra)) for b in range(256)}
    vocab = {token: i for i, token in enumerate(ROBERTA_SPECIAL_TOKENS)}
    for b in range(256):
        vocab[byte_char[b]] = len(vocab)
    firsts: list[tuple[str, str]] = []
    seconds: list[tuple[str, str]] = []
    for char in tiny_vocab():
        units = [byte_char[b] for b in char.encode("utf-8")]
        if len(char) != 1 or len(units) < 2:  # words and ASCII stay bytes: only characters are merged
            continue
        merged = units[0]
        for step, unit in enumerate(units[1:]):
            pair = (merged, unit)
            merged += unit
            if merged not in vocab:
                vocab[merged] = len(vocab)
                (firsts if step == 0 else seconds).append(pair)
    vocab["<mask>"] = len(vocab)
    return vocab, firsts + seconds


def _roberta_tokenizer(directory: str):
    import json
    import os

    import transformers

    vocab, merges = _byte_level_bpe()
    if int(transformers.__version__.split(".")[0]) >= 5:
        return transformers.RobertaTokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]  # pairs are accepted
    vocab_file = os.path.join(directory, "vocab.json")
    merges_file = os.path.join(directory, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return transformers.RobertaTokenizerFast(vocab_file=vocab_file, merges_file=merges_file)


def make_tiny_roberta(
    directory,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    model_type: str = "roberta",
):
    """Save a tiny random RoBERTa (or ``model_type="xlm-roberta"``) encoder and a byte-level BPE fast
    tokenizer (``<s>``/``</s>``/``<pad>``, one token per Chinese character of the synthetic corpus) in
    ``directory``; returns the Path. Loads back with ``AutoModel``/``AutoTokenizer.from_pretrained``."""
    from pathlib import Path

    import torch
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _roberta_tokenizer(str(directory))
    tokenizer.save_pretrained(directory)
    config_cls, model_cls = {
        "roberta": (transformers.RobertaConfig, transformers.RobertaModel),
        "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaModel),
    }[model_type]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden_size * 2,
        # RoBERTa numbers positions from pad_token_id + 1, so 256 tokens need 258 positions.
        max_position_embeddings=258,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model_cls(config, add_pooling_layer=False).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory):
    """Path of a tiny random RoBERTa (2 layers, hidden 32, byte-level BPE tokenizer), built once per session."""
    return make_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture
def synthetic_df():
    """A small labelled frame (120 rows; text, risk_level, is_adopt, risk_score, label)."""
    return synthetic_frame()
