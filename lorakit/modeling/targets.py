"""Finding target modules in an encoder nobody told us about (needs the model, so torch)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from ..errors import PluginError, did_you_mean

# Attention projection names by model family, most common first. The first family whose names all
# occur among the encoder's Linear modules is adapted (query + value, as in the LoRA paper).
ATTENTION_PATTERNS: tuple[tuple[str, ...], ...] = (
    ("query", "value"),
    ("q_lin", "v_lin"),
    ("query_proj", "value_proj"),
    ("q_proj", "v_proj"),
    ("Wqkv",),
    ("qkv",),
    ("c_attn",),
    ("in_proj",),
)


def linear_names(model: Any) -> set[str]:
    import torch

    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def detect_attention_modules(model: Any, method: str = "lora") -> list[str]:
    """LoRA targets from the encoder's Linear module names; a clear error listing them when none match
    (naming ``model.<method>.target_modules``, the option that would have set them)."""
    names = linear_names(model)
    for pattern in ATTENTION_PATTERNS:
        if all(part in names for part in pattern):
            return list(pattern)
    seen = ", ".join(sorted(names)) or "none"
    raise PluginError(
        f"found no attention projections among the model's Linear modules ({seen}); "
        f"set model.{method}.target_modules"
    )


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence a deprecation peft triggers inside transformers on every wrap (neither ours nor the user's to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def target_module_problems(model: Any, names: list[str], key: str) -> list[str]:
    """One ``key: problem`` line per name in ``names`` that picks no layer of ``model``.

    A name matches as peft matches it: a module whose full dotted name is the name or ends with ``.name``.
    It must pick a layer (a module without submodules): naming a block (``attention``) is refused by peft.
    """
    modules = dict(model.named_modules())
    layers = sorted(linear_names(model))
    shown = ", ".join(layers) or "none"
    problems = []
    for name in names:
        hits = [m for full, m in modules.items() if full == name or full.endswith(f".{name}")]
        if not hits:
            leaf_names = {full.rsplit(".", 1)[-1] for full in modules}
            hint = did_you_mean(name, leaf_names)
            problems.append(f"{key}: {name!r} is not a module of the model{hint}; its Linear layers: {shown}")
        elif not any(next(iter(m.children()), None) is None for m in hits):
            kind = type(hits[0]).__name__
            problems.append(
                f"{key}: {name!r} is a block of layers ({kind}), not a layer; name layers such as {shown}"
            )
    return problems
