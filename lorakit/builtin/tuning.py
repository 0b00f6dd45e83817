"""Built-in tuning methods, all through peft: ``lora`` (default), ``dora``, ``ia3``."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..specs import TuningMethodSpec


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


def _ia3(model: Any, target_modules: list[str], options: dict[str, Any]) -> Any:
    import peft

    feedforward = options.get("feedforward_modules") or []
    config = peft.IA3Config(target_modules=list(target_modules), feedforward_modules=list(feedforward))
    return peft.get_peft_model(model, config)


@hookimpl
def lorakit_register_tuning_methods(register):
    register(TuningMethodSpec(name="lora", apply=_lora(False), description="LoRA (peft.LoraConfig)"))
    register(
        TuningMethodSpec(name="dora", apply=_lora(True), description="DoRA (peft.LoraConfig(use_dora=True))")
    )
    register(TuningMethodSpec(name="ia3", apply=_ia3, description="(IA)^3 (peft.IA3Config)"))
