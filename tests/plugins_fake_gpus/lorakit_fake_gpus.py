"""A test plugin: fake GPUs for the scheduler, and a loss that fakes CUDA OOM on big batches.

Put this folder on PYTHONPATH: its ``*.dist-info`` registers the module under the ``lorakit`` entry-point
group, the way an installed plugin package would.

* ``LORAKIT_FAKE_GPUS="0:8000,1:8000"`` — GPU index: total MiB (all free). Unset: the next plugin answers.
* loss ``fake_oom`` — cross entropy that raises ``torch.cuda.OutOfMemoryError`` while training on a batch
  of more than ``max_batch`` rows (``train.loss_options.max_batch``).
"""

from __future__ import annotations

import os

from lorakit import hookimpl
from lorakit.specs import Device, LossSpec


@hookimpl(tryfirst=True)
def lorakit_detect_devices():
    spec = os.environ.get("LORAKIT_FAKE_GPUS")
    if spec is None:
        return None
    devices = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        index, _, total = part.partition(":")
        devices.append(
            Device(
                index=int(index),
                name=f"Fake GPU {index}",
                total_mb=int(total),
                free_mb=int(total),
                used_mb=0,
                utilization=0.0,
            )
        )
    return devices


def build_fake_oom(num_labels, max_batch=8, **options):
    import torch

    class FakeOOMLoss(torch.nn.Module):
        def forward(self, logits, labels):
            if torch.is_grad_enabled() and logits.shape[0] > max_batch:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory (fake): a batch of {logits.shape[0]} rows > {max_batch}"
                )
            return torch.nn.functional.cross_entropy(logits, labels)

    return FakeOOMLoss()


@hookimpl
def lorakit_register_losses(register):
    register(LossSpec(name="fake_oom", build=build_fake_oom, description="test: OOM on big batches"))
