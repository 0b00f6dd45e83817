"""lorakit-adapters: bottleneck adapters for BERT-family encoders, alone or combined with LoRA.

A bottleneck adapter (Houlsby et al. 2019, *Parameter-Efficient Transfer Learning for NLP*) is a small
residual MLP, ``x + up(act(down(x)))`` with ``down: hidden → hidden / reduction_factor``, placed after a
sub-layer's output projection, before its residual connection and layer norm:

- ``placement = "houlsby"``: after the attention block's output projection *and* the feed-forward block's;
- ``placement = "pfeiffer"`` (default; Pfeiffer et al. 2021, *AdapterFusion*): after the feed-forward block only.

``up`` starts at zero, so an adapted model starts out computing exactly what the base model computes.

The method is native (plain torch modules), not AdapterHub's ``adapters`` library: its releases pin their
own transformers (1.3.0 requires ``transformers~=4.57.6`` and fails to import beside transformers 5), and it
has no ERNIE. The weights are lorakit's ``lora_adapter/bottleneck.safetensors``; combined with LoRA
(``model.method = ["lora", "bottleneck"]``), the LoRA part stays a plain peft adapter beside it.
"""

from __future__ import annotations

from typing import Any

import attrs

from lorakit.config.rules import choice, positive_ints
from lorakit.hookspecs import hookimpl
from lorakit.specs import TuningMethodSpec

PLACEMENTS = ("houlsby", "pfeiffer")
NON_LINEARITIES = ("relu", "gelu", "swish", "tanh")
#: where peft puts the wrapped model's modules; names are kept without it, so they read the same either way
PEFT_PREFIX = "base_model.model."


def _doc(text: str, **kwargs: Any) -> Any:
    return attrs.field(metadata={"doc": text}, **kwargs)


@attrs.define(kw_only=True, frozen=True)
class BottleneckOptions:
    """``[model.bottleneck]``."""

    placement: str = _doc(
        "houlsby (after attention and feed-forward) | pfeiffer (after feed-forward)", default="pfeiffer"
    )
    reduction_factor: int = _doc("hidden size / bottleneck size", default=16)
    non_linearity: str = _doc("relu | gelu | swish | tanh", default="relu")
    target_modules: list[str] | None = _doc(
        "Linear layers to put an adapter after (as peft matches names); default: the placement's",
        default=None,
    )

    def problems(self, table: str) -> list[tuple[str, str]]:
        return [
            *choice(f"{table}.placement", self.placement, PLACEMENTS),
            *positive_ints({f"{table}.reduction_factor": self.reduction_factor}),
            *choice(f"{table}.non_linearity", self.non_linearity, NON_LINEARITIES),
        ]


def _modules() -> tuple[type, type]:
    """The torch modules, defined on first use: ``lorakit plugins`` and config checks never import torch."""
    global _BOTTLENECK, _ADAPTED
    if _BOTTLENECK is None:
        import torch
        from torch import nn

        activations = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}

        class Bottleneck(nn.Module):
            """``x + up(act(down(x)))``; ``up`` starts at zero (the adapter starts as the identity)."""

            def __init__(self, size: int, reduction_factor: int, non_linearity: str):
                super().__init__()
                width = max(1, size // reduction_factor)
                self.down = nn.Linear(size, width)
                self.act = activations[non_linearity]()
                self.up = nn.Linear(width, size)
                nn.init.normal_(self.down.weight, std=1e-2)
                nn.init.zeros_(self.down.bias)
                nn.init.zeros_(self.up.weight)
                nn.init.zeros_(self.up.bias)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x + self.up(self.act(self.down(x)))

        class AdaptedLinear(nn.Module):
            """A frozen Linear layer followed by its bottleneck adapter."""

            def __init__(self, base: nn.Linear, adapter: nn.Module):
                super().__init__()
                self.base = base
                self.bottleneck = adapter

            @property
            def weight(self) -> torch.Tensor:  # what code that inspects the layer's dtype or device reads
                return self.base.weight

            @property
            def in_features(self) -> int:
                return self.base.in_features

            @property
            def out_features(self) -> int:
                return self.base.out_features

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.bottleneck(self.base(x))

        _BOTTLENECK, _ADAPTED = Bottleneck, AdaptedLinear
    return _BOTTLENECK, _ADAPTED


_BOTTLENECK: Any = None
_ADAPTED: Any = None


def select_layers(model: Any, options: dict[str, Any]) -> list[str]:
    """The output projections the placement puts adapters after, in every transformer layer of ``model``:
    a layer is a module with ``attention.output.dense`` and ``output.dense`` (BERT, ERNIE, RoBERTa)."""
    placement = options.get("placement", "pfeiffer")
    modules = dict(model.named_modules())
    chosen = []
    for name in modules:
        prefix = f"{name}." if name else ""
        if f"{prefix}attention.output.dense" not in modules or f"{prefix}output.dense" not in modules:
            continue
        if placement == "houlsby":
            chosen.append(f"{prefix}attention.output.dense")
        chosen.append(f"{prefix}output.dense")
    return chosen


def _targets(model: Any, target_modules: list[str] | None, options: dict[str, Any]) -> list[str]:
    if not target_modules:
        found = select_layers(model, options)
        if not found:
            raise ValueError(
                "found no BERT-style layers (attention.output.dense and output.dense); "
                "set model.bottleneck.target_modules"
            )
        return found
    names = [n for n, _ in model.named_modules()]
    return [n for n in names if any(n == t or n.endswith(f".{t}") for t in target_modules)]


def apply(model: Any, target_modules: list[str] | None, options: dict[str, Any]) -> Any:
    """Put a bottleneck adapter after each target Linear layer of ``model`` (in place; only the adapters
    train). A layer another method already wrapped (LoRA on the same projection) is refused."""
    from torch import nn

    bottleneck, adapted = _modules()
    for name in _targets(model, target_modules, options):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, attr)
        if not isinstance(layer, nn.Linear):
            kind = f"{type(layer).__module__.split('.')[0]}'s {type(layer).__name__}"
            raise ValueError(
                f"{name.removeprefix(PEFT_PREFIX)} is already adapted ({kind}, not a plain Linear layer); "
                "give each method layers of its own"
            )
        adapter = bottleneck(layer.out_features, options["reduction_factor"], options["non_linearity"])
        setattr(parent, attr, adapted(layer, adapter.to(layer.weight.device)))
    return model


def state_dict(model: Any) -> dict[str, Any]:
    """Every adapter's weights, by the adapted layer's name (without peft's prefix)."""
    _, adapted = _modules()
    return {
        f"{name.removeprefix(PEFT_PREFIX)}.bottleneck.{key}": value
        for name, module in model.named_modules()
        if isinstance(module, adapted)
        for key, value in module.bottleneck.named_parameters()
    }


def load_state_dict(model: Any, state: dict[str, Any]) -> None:
    """Copy ``state`` into the adapters of ``model``; every adapter must get exactly its weights."""
    import torch

    own = state_dict(model)
    if set(own) != set(state):
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise KeyError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for key, param in own.items():
            if tuple(param.shape) != tuple(state[key].shape):
                raise RuntimeError(
                    f"{key} has shape {tuple(state[key].shape)}, expected {tuple(param.shape)}"
                )
            param.copy_(state[key])


def trainable_parameters(layers: list[tuple[str, int, int]], options: dict[str, Any]) -> int:
    """Per adapted layer: down (out × width + width) and up (width × out + out)."""
    factor = int(options["reduction_factor"])
    total = 0
    for _, _, n_out in layers:
        width = max(1, n_out // factor)
        total += 2 * n_out * width + width + n_out
    return total


@hookimpl
def lorakit_register_tuning_methods(register):
    register(
        TuningMethodSpec(
            name="bottleneck",
            apply=apply,
            options=BottleneckOptions,
            trainable_parameters=trainable_parameters,
            library="lorakit-adapters",
            state_dict=state_dict,
            load_state_dict=load_state_dict,
            select_layers=select_layers,
            description="bottleneck adapters (Houlsby or Pfeiffer placement)",
        )
    )
