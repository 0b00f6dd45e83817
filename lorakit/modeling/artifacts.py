"""Saving and loading a trained model: ``lora_adapter/`` (plain peft) + ``heads.safetensors`` + ``heads.json``.

Loading checks each file first (:mod:`lorakit.readback`): a damaged one is ``<path>: damaged (<reason>)``,
not a traceback from peft, safetensors or torch.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import attrs

from .. import readback as rb
from ..errors import LorakitError
from ..fsutil import write_json_atomic
from ..plugins import Plugins
from ..runs.layout import ADAPTER_CONFIG_CHECK, RunLayout
from .targets import quiet_peft


def save_artifacts(
    layout: RunLayout, classifier: Any, plan_json: dict[str, Any], extra: dict[str, Any]
) -> None:
    """Write the adapter folder next to the old one, then swap: a crash never leaves half an adapter."""
    from safetensors.torch import save_file

    tmp = layout.root / f".lora_adapter.tmp-{uuid.uuid4().hex[:8]}"
    with quiet_peft():
        classifier.encoder.save_pretrained(str(tmp))
    heads = {
        f"{key}.{name}": tensor.detach().cpu().contiguous()
        for key, head in classifier.heads.items()
        for name, tensor in head.state_dict().items()
    }
    save_file(heads, str(tmp / "heads.safetensors"))
    write_json_atomic(tmp / "heads.json", {**plan_json, **extra})
    old = layout.root / f".lora_adapter.old-{uuid.uuid4().hex[:8]}"
    if layout.adapter_dir.exists():
        layout.adapter_dir.rename(old)
    tmp.rename(layout.adapter_dir)
    shutil.rmtree(old, ignore_errors=True)


@attrs.define(kw_only=True)
class TrainedModel:
    classifier: Any
    tokenizer: Any
    heads: dict[str, Any]
    probability_fns: list[Any]


def load_artifacts(layout: RunLayout, plugins: Plugins, *, device: str = "cpu") -> TrainedModel:
    """Rebuild the classifier from an experiment folder: base model + peft adapter + heads."""
    import peft
    import torch

    from .model import MultiTaskClassifier

    if not layout.adapter_dir.exists():
        raise LorakitError(f"{layout.root}: no trained model (lora_adapter/ is missing)")
    meta = layout.read_heads()
    check_adapter(layout)
    rb.safetensors_header(layout.heads_weights)  # before the minutes a large base model takes to load
    backbone = plugins.backbones().get(meta["backbone"])
    encoder = backbone.load_model(meta["arch"])
    try:
        with quiet_peft():
            adapted = peft.PeftModel.from_pretrained(encoder, str(layout.adapter_dir))
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:
        # the files passed the checks above, yet do not fit this base model: a foreign adapter
        raise rb.load_failure(layout.adapter_dir, exc, "peft cannot load this adapter") from None
    head_specs = [plugins.task_heads().get(task["head"]) for task in meta["tasks"]]
    hidden = encoder.config.hidden_size
    heads = [
        spec.build(hidden, t["num_labels"], dict(t["head_options"]))
        for spec, t in zip(head_specs, meta["tasks"], strict=False)
    ]
    classifier = MultiTaskClassifier(adapted, heads, [t["name"] for t in meta["tasks"]], meta["pooling"])
    load_heads(classifier, layout)
    classifier.to(torch.device(device)).eval()
    return TrainedModel(
        classifier=classifier,
        tokenizer=backbone.load_tokenizer(meta["arch"]),
        heads=meta,
        probability_fns=[spec.probabilities for spec in head_specs],
    )


def check_adapter(layout: RunLayout) -> None:
    """``adapter_config.json`` and the adapter's weights are there and well formed (no torch, no peft)."""
    rb.read_json(layout.adapter_config, ADAPTER_CONFIG_CHECK)
    header = rb.safetensors_header(layout.adapter_weights)
    if not [name for name in header if name != "__metadata__"]:
        raise rb.DamagedContent(layout.adapter_weights, "holds no tensors")


def probabilities(logits: Any, fn: Any) -> Any:
    """Per-class probabilities: the head's own function (ordinal heads), else softmax."""
    return fn(logits) if fn is not None else logits.float().softmax(-1)


def load_heads(classifier: Any, layout: RunLayout) -> None:
    """Load ``heads.safetensors`` (keys ``t<i>.<param>``, as :func:`save_artifacts` writes them) into the heads."""
    from safetensors.torch import load_file

    path = layout.heads_weights
    rb.safetensors_header(path)
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors' own error type is not importable without its Rust module
        raise rb.load_failure(path, exc, "safetensors cannot load it") from None
    expected = {f"{key}.{name}" for key, head in classifier.heads.items() for name in head.state_dict()}
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise rb.DamagedContent(
            path, f"does not fit the heads of heads.json: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for key, head in classifier.heads.items():
        try:
            head.load_state_dict(
                {name.split(".", 1)[1]: v for name, v in state.items() if name.split(".", 1)[0] == key}
            )
        except RuntimeError as exc:  # a tensor of the wrong shape
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise rb.DamagedContent(path, f"does not fit the heads of heads.json: {lines[-1]}") from None


RELOAD_ADAPTER = "lorakit_reload_check"


@contextlib.contextmanager
def saved_adapter_active(classifier: Any, layout: RunLayout) -> Iterator[Any]:
    """Within the block, ``classifier`` runs the experiment's *saved* adapter (loaded by peft from
    ``lora_adapter/`` as a second adapter of the same base model) and saved heads; afterwards the
    trained adapter and heads are back. No second copy of the encoder is made."""
    encoder = classifier.encoder
    previous = encoder.active_adapter
    heads = classifier.heads
    with quiet_peft():
        encoder.load_adapter(str(layout.adapter_dir), adapter_name=RELOAD_ADAPTER)
    try:
        encoder.set_adapter(RELOAD_ADAPTER)
        classifier.heads = copy.deepcopy(heads)
        load_heads(classifier, layout)
        yield classifier
    finally:
        classifier.heads = heads
        encoder.set_adapter(previous)
        encoder.delete_adapter(RELOAD_ADAPTER)
