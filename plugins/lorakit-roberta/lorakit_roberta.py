"""lorakit-roberta: the ``roberta`` backbone, for RoBERTa and XLM-RoBERTa encoders.

Installing the package is the whole setup: lorakit finds this module through the ``roberta`` entry
point of the ``lorakit`` group (see ``pyproject.toml``). It registers one backbone and answers
``lorakit_resolve_backbone`` for the ``roberta`` and ``xlm-roberta`` model types, so a config naming
``arch = "xlm-roberta-base"`` picks it without ``model.backbone``.

Like every lorakit plugin it imports nothing heavy at import time: ``lorakit plugins`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lorakit import hookimpl
from lorakit.specs import BackboneSpec

# ``config.model_type`` of the checkpoints this backbone serves. Both share RoBERTa's encoder layout
# (RobertaSelfAttention with query/key/value linears); only the tokenizer differs (byte-level BPE vs
# SentencePiece), and AutoTokenizer picks the right one from the checkpoint.
MODEL_TYPES = ("roberta", "xlm-roberta")


def load_model(path_or_id: str, **kwargs: Any) -> Any:
    """The bare encoder, without a pooler: lorakit pools the ``<s>`` state itself, and RoBERTa
    checkpoints ship no trained pooler (RoBERTa dropped next-sentence prediction), so building one
    would only add random weights and a "newly initialized" warning."""
    import transformers

    return transformers.AutoModel.from_pretrained(path_or_id, add_pooling_layer=False, **kwargs)


def load_tokenizer(path_or_id: str) -> Any:
    """The checkpoint's fast tokenizer (lorakit tokenizes in batches and relies on the fast ones)."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path_or_id, use_fast=True)


ROBERTA = BackboneSpec(
    name="roberta",
    model_types=MODEL_TYPES,
    load_model=load_model,
    load_tokenizer=load_tokenizer,
    # The LoRA paper's RoBERTa experiments (Hu et al. 2021, GLUE) adapt W_q and W_v only; adding
    # W_k bought nothing there, and query/value keeps runs comparable with the built-in `bert`
    # backbone. `model.lora.target_modules` overrides it per experiment.
    target_modules=("query", "value"),
    # "cls" pools position 0, which for RoBERTa is the <s> token (its CLS counterpart).
    pooling="cls",
    provided_by="lorakit-roberta",
    description="RoBERTa and XLM-RoBERTa (roberta-base, xlm-roberta-base, ...); LoRA on query/value, pooled on <s>",
)


@hookimpl
def lorakit_register_backbones(register: Callable[[BackboneSpec], None]) -> None:
    """Register the ``roberta`` backbone."""
    register(ROBERTA)


@hookimpl
def lorakit_resolve_backbone(model_config: Any) -> str | None:
    """``"roberta"`` for RoBERTa and XLM-RoBERTa configs; ``None`` lets other plugins answer.

    No ``tryfirst`` is needed: the built-ins answer only for their own model types, and their ``auto``
    fallback is ``trylast``, so this answer always comes before it.
    """
    return ROBERTA.name if getattr(model_config, "model_type", None) in MODEL_TYPES else None
