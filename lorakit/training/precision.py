"""Mixed precision: which one a run uses, and the autocast and loss scaler that carry it out.

``train.mixed_precision`` is ``no | fp16 | bf16 | auto``. ``auto`` (the default) is bf16 where the
hardware runs bf16 matrix multiplies natively (CUDA with bf16 support; a CPU with AVX512-BF16 or AMX),
else fp32: never fp16 by surprise, since fp16 needs a loss scaler and can overflow. The precision a run
*used* (``fp32``, ``bf16`` or ``fp16``) is recorded in run.json and the index; a resumed run keeps the
precision it started with, so a checkpoint written on a GPU in bf16 resumes in bf16 on a CPU too.

lorakit owns autocast and the loss scaler rather than Accelerate's ``mixed_precision``: Accelerate wraps
``forward`` in autocast and keeps that wrapper through ``unwrap_model``, so the trained model and a
reloaded copy would run in different precisions; it also refuses fp16 on CPU, where torch supports both
fp16 autocast and a loss scaler, which is how fp16 (and its scaler's checkpointing) is tested here.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

#: what ``train.mixed_precision`` accepts
REQUESTS = ("no", "fp16", "bf16", "auto")

# The reload check's tolerance per precision: both sides run the same autocast on the same weights, so
# they agree to the last bit in practice; the margin is a few units of the dtype's rounding error, far
# below what a wrong adapter changes.
RELOAD_TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 4e-3}


def device_type(device: Any) -> str:
    """``cuda`` or ``cpu`` for a ``torch.device`` or its name."""
    return str(getattr(device, "type", device))


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU (torch's own probe, else /proc/cpuinfo's flags)."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        if probe is not None:
            with contextlib.suppress(Exception):
                if probe():
                    return True
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def native_bf16(device: Any) -> bool:
    """Whether ``device`` runs bf16 matrix multiplies natively (not emulated)."""
    import torch

    if device_type(device) == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch < 2.3 has no including_emulation
            return bool(torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()


def resolve(requested: str, device: Any) -> str:
    """The precision a run on ``device`` uses for ``train.mixed_precision = requested``."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return {"no": "fp32"}.get(requested, requested)


def emulation_note(precision: str, device: Any) -> str | None:
    """A one-line note when the precision asked for is emulated here (bf16 on a CPU without AVX512-BF16
    or AMX, fp16 on any CPU): correct, but several times slower than fp32."""
    kind = device_type(device)
    if kind == "cuda" or precision == "fp32" or (precision == "bf16" and native_bf16(device)):
        return None
    return (
        f"{precision} is emulated on this CPU (no native {precision} matrix multiplies): expect it to be "
        'several times slower than fp32 (train.mixed_precision = "auto" picks fp32 here)'
    )


def autocast_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(precision: str, device: Any) -> contextlib.AbstractContextManager[Any]:
    """The autocast every forward pass of the run uses (training, evaluation, the reload check)."""
    import torch

    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type(device), dtype=dtype)


def grad_scaler(precision: str, device: Any) -> Any:
    """fp16's dynamic loss scaler (None for fp32 and bf16, whose range needs none)."""
    if precision != "fp16":
        return None
    import torch

    return torch.amp.GradScaler(device_type(device))


def enable_tf32(device: Any) -> bool:
    """TF32 matmuls for the fp32 parts on Ampere and later (what PyTorch leaves off by default)."""
    import torch

    if device_type(device) != "cuda":
        return False
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True
