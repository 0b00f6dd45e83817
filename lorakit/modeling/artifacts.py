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


def save_artifacts(layout: RunLayout, classifier: Any, plan: Any, extra: dict[str, Any]) -> None:
    """Write the adapter folder next to the old one, then swap: a crash never leaves half an adapter.

    The peft method (if any) saves as peft does; each other method's weights go to ``<method>.safetensors``.
    """
    from safetensors.torch import save_file

    tmp = layout.root / f".lora_adapter.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    if plan.peft_part is not None:
        with quiet_peft():
            classifier.encoder.save_pretrained(str(tmp))
    for part in plan.parts:
        if not part.spec.uses_peft:
            weights = {
                k: v.detach().cpu().contiguous() for k, v in part.spec.state_dict(classifier.encoder).items()
            }
            save_file(weights, str(tmp / f"{part.name}.safetensors"))
    heads = {
        f"{key}.{name}": tensor.detach().cpu().contiguous()
        for key, head in classifier.heads.items()
        for name, tensor in head.state_dict().items()
    }
    save_file(heads, str(tmp / "heads.safetensors"))
    write_json_atomic(tmp / "heads.json", {**plan.to_json(), **extra})
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


def saved_parts(meta: dict[str, Any], plugins: Plugins) -> list[Any]:
    """The tuning methods heads.json records (folders from before combinations: its one ``method``),
    each with its installed plugin's spec (a method whose plugin is missing is refused by name)."""
    from ..config.schema import ModelConfig
    from .plan import MethodPart, lookup

    recorded = meta.get("methods") or [
        {
            "name": meta.get("method", attrs.fields(ModelConfig).method.default),
            "options": meta.get("method_options") or {},
            "target_modules": meta.get("target_modules"),
        }
    ]
    return [
        MethodPart(
            name=p["name"],
            spec=lookup(plugins.tuning_methods(), p["name"], "model.method"),
            options=dict(p["options"]),
            target_modules=p.get("target_modules"),
        )
        for p in recorded
    ]


def load_artifacts(layout: RunLayout, plugins: Plugins, *, device: str = "cpu") -> TrainedModel:
    """Rebuild the classifier from an experiment folder: base model + each tuning method's weights + heads."""
    import peft
    import torch

    if not layout.adapter_dir.exists():
        raise LorakitError(f"{layout.root}: no trained model (lora_adapter/ is missing)")
    meta = layout.read_heads()
    parts = saved_parts(meta, plugins)
    check_method_files(layout, parts)
    rb.safetensors_header(layout.heads_weights)  # before the minutes a large base model takes to load
    backbone = plugins.backbones().get(meta["backbone"])
    encoder = backbone.load_model(meta["arch"])
    adapted = encoder
    for part in sorted(parts, key=lambda p: not p.spec.uses_peft):
        if part.spec.uses_peft:
            try:
                with quiet_peft():
                    adapted = peft.PeftModel.from_pretrained(encoder, str(layout.adapter_dir))
            except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:
                # the files passed the checks above, yet do not fit this base model: a foreign adapter
                raise rb.load_failure(layout.adapter_dir, exc, "peft cannot load this adapter") from None
        else:
            adapted = part.spec.apply(adapted, part.target_modules, part.options)
            load_method_weights(layout, part, adapted)
    classifier, head_specs = with_saved_heads(adapted, meta, plugins, layout)
    classifier.to(torch.device(device)).eval()
    return TrainedModel(
        classifier=classifier,
        tokenizer=backbone.load_tokenizer(meta["arch"]),
        heads=meta,
        probability_fns=[spec.probabilities for spec in head_specs],
    )


def with_saved_heads(
    encoder: Any, meta: dict[str, Any], plugins: Plugins, layout: RunLayout
) -> tuple[Any, list[Any]]:
    """A classifier over ``encoder`` with the heads heads.json describes, their saved weights loaded;
    and each task's head spec."""
    from .model import MultiTaskClassifier

    specs = [plugins.task_heads().get(task["head"]) for task in meta["tasks"]]
    hidden = encoder.config.hidden_size
    heads = [
        spec.build(hidden, t["num_labels"], dict(t["head_options"]))
        for spec, t in zip(specs, meta["tasks"], strict=True)
    ]
    classifier = MultiTaskClassifier(encoder, heads, [t["name"] for t in meta["tasks"]], meta["pooling"])
    load_heads(classifier, layout)
    return classifier, specs


def label_names(meta: dict[str, Any]) -> dict[str, list[str]]:
    """Each task's label names in id order, from heads.json."""
    return {name: list(info["labels"]) for name, info in meta["labels"].items()}


def answers(
    tasks: list[str], labels: dict[str, list[str]], probs: list[Any]
) -> list[dict[str, dict[str, Any]]]:
    """Per row, per task: ``{"label": str, "probabilities": {label: p}}`` from each task's
    ``[rows, labels]`` probabilities (the shape ``predict`` and ``lorakit serve`` answer in)."""
    rows = len(probs[0]) if probs else 0
    out = []
    for row in range(rows):
        item = {}
        for t, task in enumerate(tasks):
            p = [float(v) for v in probs[t][row]]
            names = labels[task]
            item[task] = {
                "label": names[max(range(len(p)), key=p.__getitem__)],
                "probabilities": dict(zip(names, p, strict=False)),
            }
        out.append(item)
    return out


def check_method_files(layout: RunLayout, parts: list[Any]) -> None:
    """Each tuning method's files are there and well formed (no torch, no peft)."""
    for part in parts:
        if part.spec.uses_peft:
            check_adapter(layout)
        else:
            _tensor_names(layout.method_weights(part.name))


def load_method_weights(layout: RunLayout, part: Any, model: Any) -> None:
    """Load ``<method>.safetensors`` into ``model`` through the method's ``load_state_dict``."""
    from safetensors.torch import load_file

    path = layout.method_weights(part.name)
    _tensor_names(path)
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors' own error type is not importable without its Rust module
        raise rb.load_failure(path, exc, "safetensors cannot load it") from None
    try:
        part.spec.load_state_dict(model, state)
    except (KeyError, ValueError, RuntimeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        raise rb.DamagedContent(
            path, f"does not fit the {part.name} modules of the model: {lines[-1]}"
        ) from None


def _tensor_names(path: Any) -> list[str]:
    header = rb.safetensors_header(path)
    names = [name for name in header if name != "__metadata__"]
    if not names:
        raise rb.DamagedContent(path, "holds no tensors")
    return names


def check_adapter(layout: RunLayout) -> None:
    """``adapter_config.json`` and the adapter's weights are there and well formed (no torch, no peft)."""
    rb.read_json(layout.adapter_config, ADAPTER_CONFIG_CHECK)
    _tensor_names(layout.adapter_weights)


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
def saved_adapter_active(classifier: Any, layout: RunLayout, parts: list[Any]) -> Iterator[Any]:
    """Within the block, ``classifier`` runs the experiment's *saved* weights: the peft adapter loaded by
    peft from ``lora_adapter/`` as a second adapter of the same base model, each other method's weights
    loaded over its modules (filled with NaN first, so a weight the file misses shows), and the saved heads;
    afterwards the trained weights are back. No second copy of the encoder is made."""
    import torch

    encoder = classifier.encoder
    uses_peft = any(p.spec.uses_peft for p in parts)
    others = [p for p in parts if not p.spec.uses_peft]
    trained = {p.name: {k: v.detach().clone() for k, v in p.spec.state_dict(encoder).items()} for p in others}
    previous = encoder.active_adapter if uses_peft else None
    heads = classifier.heads
    if uses_peft:
        with quiet_peft():
            encoder.load_adapter(str(layout.adapter_dir), adapter_name=RELOAD_ADAPTER)
    try:
        if uses_peft:
            encoder.set_adapter(RELOAD_ADAPTER)
        for part in others:
            part.spec.load_state_dict(
                encoder, {k: torch.full_like(v, float("nan")) for k, v in trained[part.name].items()}
            )
            load_method_weights(layout, part, encoder)
        classifier.heads = copy.deepcopy(heads)
        load_heads(classifier, layout)
        yield classifier
    finally:
        classifier.heads = heads
        for part in others:
            part.spec.load_state_dict(encoder, trained[part.name])
        if uses_peft:
            encoder.set_adapter(previous)
            encoder.delete_adapter(RELOAD_ADAPTER)
