"""Built-in tuning methods, all through peft: ``lora`` (default), ``dora``, ``ia3``.

Each owns its ``[model.<method>]`` table through an options class; each counts what it adds for the
memory estimate.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..config.rules import Problems, choice, fraction, positive_ints
from ..hookspecs import hookimpl
from ..specs import TuningMethodSpec

LORA_BIASES = ("none", "all", "lora_only")


def _doc(text: str, **kwargs: Any) -> Any:
    return attrs.field(metadata={"doc": text}, **kwargs)


@attrs.define(kw_only=True, frozen=True)
class LoraOptions:
    """``[model.lora]`` and ``[model.dora]``."""

    rank: int = _doc("LoRA rank r", default=8)
    alpha: int = _doc("LoRA alpha (scaling = alpha / rank)", default=16)
    dropout: float = _doc("dropout on the LoRA path", default=0.1)
    target_modules: list[str] | None = _doc("module names to adapt; default: the backbone's", default=None)
    bias: str = _doc("none | all | lora_only", default="none")

    def problems(self, table: str) -> Problems:
        return [
            *positive_ints({f"{table}.rank": self.rank, f"{table}.alpha": self.alpha}),
            *fraction(f"{table}.dropout", self.dropout),
            *choice(f"{table}.bias", self.bias, LORA_BIASES),
        ]


@attrs.define(kw_only=True, frozen=True)
class IA3Options:
    """``[model.ia3]``."""

    target_modules: list[str] | None = _doc("module names to adapt; default: the backbone's", default=None)
    feedforward_modules: list[str] | None = _doc(
        "subset of target_modules that are feed-forward", default=None
    )

    def problems(self, table: str) -> Problems:
        ff, targets = self.feedforward_modules, self.target_modules
        if ff and targets and set(ff) - set(targets):
            outside = sorted(set(ff) - set(targets))
            return [(f"{table}.feedforward_modules", f"{outside} are not in {table}.target_modules")]
        return []


def _lora(use_dora: bool):
    def apply(model: Any, target_modules: list[str], options: dict[str, Any]) -> Any:
        import peft

        config = peft.LoraConfig(
            r=options["rank"],
            lora_alpha=options["alpha"],
            lora_dropout=options.get("dropout", 0.0),
            target_modules=list(target_modules),
            bias=options.get("bias", "none"),
            use_dora=use_dora,
        )
        return peft.get_peft_model(model, config)

    return apply


def _lora_parameters(use_dora: bool):
    def count(layers: list[tuple[str, int, int]], options: dict[str, Any]) -> int:
        # A (rank x in) and B (out x rank) per layer; DoRA adds a magnitude per output feature.
        rank = int(options["rank"])
        return sum(rank * (n_in + n_out) + (n_out if use_dora else 0) for _, n_in, n_out in layers)

    return count


def _ia3(model: Any, target_modules: list[str], options: dict[str, Any]) -> Any:
    import peft

    feedforward = options.get("feedforward_modules") or []
    config = peft.IA3Config(target_modules=list(target_modules), feedforward_modules=list(feedforward))
    return peft.get_peft_model(model, config)


def _ia3_parameters(layers: list[tuple[str, int, int]], options: dict[str, Any]) -> int:
    # one scaling vector per layer: over the inputs of a feed-forward layer, the outputs of the others
    feedforward = options.get("feedforward_modules") or []
    total = 0
    for name, n_in, n_out in layers:
        is_ff = any(name == f or name.endswith(f".{f}") for f in feedforward)
        total += n_in if is_ff else n_out
    return total


@hookimpl
def lorakit_register_tuning_methods(register):
    for name, dora, what in (
        ("lora", False, "LoRA (peft.LoraConfig)"),
        ("dora", True, "DoRA (peft.LoraConfig(use_dora=True))"),
    ):
        register(
            TuningMethodSpec(
                name=name,
                apply=_lora(dora),
                options=LoraOptions,
                trainable_parameters=_lora_parameters(dora),
                rank_option="rank",
                description=what,
            )
        )
    register(
        TuningMethodSpec(
            name="ia3",
            apply=_ia3,
            options=IA3Options,
            trainable_parameters=_ia3_parameters,
            module_lists=("target_modules", "feedforward_modules"),
            description="(IA)^3 (peft.IA3Config)",
        )
    )
