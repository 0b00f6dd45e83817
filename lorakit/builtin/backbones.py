"""Built-in backbones: ``bert``, ``ernie`` and ``auto`` (any encoder; finds its attention projections)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..specs import BackboneSpec


def load_encoder(path_or_id: str, **kwargs: Any) -> Any:
    """The bare encoder (no task head)."""
    import transformers

    # transformers reports the pooler weights we leave out as "UNEXPECTED": expected here, so keep quiet
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        return transformers.AutoModel.from_pretrained(path_or_id, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()


def load_encoder_without_pooler(path_or_id: str, **kwargs: Any) -> Any:
    """BERT-like encoders carry a pooler lorakit never uses (it pools itself): leave it out."""
    return load_encoder(path_or_id, add_pooling_layer=False, **kwargs)


def load_tokenizer(path_or_id: str) -> Any:
    """The encoder's fast tokenizer (lorakit relies on fast batched tokenization)."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path_or_id, use_fast=True)


BERT = BackboneSpec(
    name="bert",
    model_types=("bert",),
    load_model=load_encoder_without_pooler,
    load_tokenizer=load_tokenizer,
    target_modules=("query", "value"),
    pooling="cls",
    description="BERT and its variants (bert-base-chinese, MiniLM, ...); LoRA on query/value",
)
ERNIE = BackboneSpec(
    name="ernie",
    model_types=("ernie",),
    load_model=load_encoder_without_pooler,
    load_tokenizer=load_tokenizer,
    target_modules=("query", "key", "value"),
    pooling="cls",
    description="ERNIE 1.0/2.0/3.0 (ErnieModel); LoRA on query/key/value",
)
AUTO = BackboneSpec(
    name="auto",
    model_types=(),
    load_model=load_encoder,
    load_tokenizer=load_tokenizer,
    target_modules=None,
    pooling="cls",
    description="any Hugging Face encoder; LoRA targets detected from its attention projections",
)
BY_MODEL_TYPE = {model_type: spec.name for spec in (BERT, ERNIE) for model_type in spec.model_types}


@hookimpl
def lorakit_register_backbones(register):
    for spec in (BERT, ERNIE, AUTO):
        register(spec)


@hookimpl
def lorakit_resolve_backbone(model_config):
    return BY_MODEL_TYPE.get(getattr(model_config, "model_type", None))


class AutoFallback:
    """``auto`` answers last, after every other plugin had its say."""

    @hookimpl(trylast=True)
    def lorakit_resolve_backbone(self, model_config):
        return "auto"


auto_fallback = AutoFallback()
