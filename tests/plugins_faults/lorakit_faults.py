"""A test plugin that injects faults into real runs, switched by environment variables.

Put this folder on PYTHONPATH: its ``*.dist-info`` registers the module under the ``lorakit`` entry-point
group, the way an installed plugin package would.

* backbone ``slow_bert`` — BERT whose model load first touches ``$LORAKIT_FAULT_LOADING`` (a path) and then
  sleeps ``$LORAKIT_FAULT_LOAD_SECONDS`` (default 0): a window in which to signal a run during loading.
* ``$LORAKIT_FAULT_CORRUPT_ADAPTER`` (a path to ``adapter_model.safetensors``) — after every epoch the saved
  adapter's LoRA B matrices get noise: a wrong adapter on disk.
* ``$LORAKIT_FAULT_FILL_DISK=<epoch>`` with ``$LORAKIT_FAULT_FILL_PATH`` — at the end of that epoch (before its
  checkpoint is written) a file at that path grows until its disk is full: a real full disk, mid-run.
* ``$LORAKIT_FAULT_RUN_END=1`` — ``lorakit_on_run_end`` raises when a run completes.
* loss ``amplified`` — cross entropy times ``factor`` (``train.loss_options.factor``): in fp16 the scaled
  gradients overflow, so the loss scaler skips steps.
* loss ``rank1_oom`` — cross entropy that raises ``torch.cuda.OutOfMemoryError`` on rank 1 of a
  distributed run only (the others then fail on a broken connection, or are stopped by torchrun).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from lorakit import hookimpl
from lorakit.builtin.backbones import BERT
from lorakit.specs import BackboneSpec, LossSpec


def _slow_load(path_or_id, **kwargs):
    marker = os.environ.get("LORAKIT_FAULT_LOADING")
    if marker:
        Path(marker).write_text(str(os.getpid()), encoding="utf-8")
    time.sleep(float(os.environ.get("LORAKIT_FAULT_LOAD_SECONDS", "0")))
    return BERT.load_model(path_or_id, **kwargs)


@hookimpl
def lorakit_register_backbones(register):
    register(
        BackboneSpec(
            name="slow_bert",
            load_model=_slow_load,
            load_tokenizer=BERT.load_tokenizer,
            target_modules=BERT.target_modules,
            description="test: BERT that takes its time to load",
        )
    )


def build_amplified(num_labels, class_weights=None, factor=1.0, **options):
    import torch

    class Amplified(torch.nn.Module):
        def forward(self, logits, labels):
            return torch.nn.functional.cross_entropy(logits.float(), labels) * factor

    return Amplified()


def build_rank1_oom(num_labels, class_weights=None, **options):
    import torch

    class Rank1OOM(torch.nn.Module):
        def forward(self, logits, labels):
            if torch.is_grad_enabled() and os.environ.get("RANK") == "1":
                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory (fake): tried to allocate 2.00 GiB on rank 1"
                )
            return torch.nn.functional.cross_entropy(logits.float(), labels)

    return Rank1OOM()


@hookimpl
def lorakit_register_losses(register):
    register(LossSpec(name="amplified", build=build_amplified, description="test: cross entropy × factor"))
    register(LossSpec(name="rank1_oom", build=build_rank1_oom, description="test: OOM on rank 1"))


@hookimpl
def lorakit_on_epoch_end(exp_id, epoch, metrics):
    if os.environ.get("LORAKIT_FAULT_FILL_DISK") == str(epoch):
        _fill_disk(Path(os.environ["LORAKIT_FAULT_FILL_PATH"]))
    path = os.environ.get("LORAKIT_FAULT_CORRUPT_ADAPTER")
    if not path or not Path(path).is_file():
        return
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(path)
    generator = torch.Generator().manual_seed(epoch)
    for name, tensor in weights.items():
        if "lora_B" in name:
            weights[name] = tensor + torch.randn(tensor.shape, generator=generator)
    save_file(weights, path)


def _fill_disk(path: Path) -> None:
    chunk = b"\0" * 4096
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError:  # ENOSPC: the disk is full now
            pass


@hookimpl
def lorakit_on_run_end(exp_id, status, metrics, output_dir):
    if os.environ.get("LORAKIT_FAULT_RUN_END") and status == "completed":
        raise RuntimeError(f"fault injected: on_run_end refused {exp_id}")
