"""A test plugin: fake GPUs for the scheduler, and a loss that fakes CUDA OOM on big batches.

Put this folder on PYTHONPATH: its ``*.dist-info`` registers the module under the ``lorakit`` entry-point
group, the way an installed plugin package would.

* ``LORAKIT_FAKE_GPUS="0:8000,1:8000"`` — GPU index: total MiB (all free). Unset: the next plugin answers.
  Each comma-separated entry is ``INDEX:TOTAL`` followed by any of ``:uuid=ID`` (``GPU-...`` or
  ``MIG-...``; none by default, so jobs get bare indices), ``:mode=MODE`` (``default``,
  ``exclusive_process``, ``prohibited``), ``:free=MiB`` (default: all free). ``INDEX`` ``P/S`` is MIG slice
  ``S`` of GPU ``P``: list its slices and not the GPU itself, as NVML's probe does. Example:
  ``0:8000:uuid=GPU-aaa:mode=exclusive_process,1/0:4000:uuid=MIG-bbb,1/1:4000:uuid=MIG-ccc``.
  ``CUDA_VISIBLE_DEVICES`` is not applied here: the core applies it to whatever device plugins report.
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
    return [fake_device(part) for part in filter(None, (p.strip() for p in spec.split(",")))]


def fake_device(entry: str) -> Device:
    """One ``INDEX:TOTAL[:key=value...]`` entry (see the module docstring)."""
    index, total, *options = entry.split(":")
    extra = dict(option.split("=", 1) for option in options)
    parent, slash, mig = index.partition("/")
    where = (
        {"index": int(index)}
        if not slash
        else {
            "index": Device.mig_index_of(int(parent), int(mig)),
            "parent_index": int(parent),
            "mig_index": int(mig),
        }
    )
    return Device(
        **where,
        name=f"Fake GPU {index}" if not slash else f"Fake GPU {parent} MIG {mig}",
        total_mb=int(total),
        free_mb=int(extra.get("free", total)),
        used_mb=int(total) - int(extra.get("free", total)),
        utilization=0.0,
        uuid=extra.get("uuid"),
        compute_mode=extra.get("mode", "default"),
    )


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
