"""The device inventory as the scheduler uses it: GPUs from the ``lorakit_detect_devices`` hook, a pool."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import LorakitError
from ..plugins import Plugins
from ..specs import Device
from .placement import GpuState


def detect_gpus(plugins: Plugins) -> list[Device]:
    """The GPUs the device plugins report (an empty list: CPU only)."""
    return [device for device in plugins.detect_devices() if device.kind == "cuda"]


def parse_gpu_pool(text: str | None) -> tuple[int, ...] | None:
    """``--gpu-pool``: ``"0,1"`` → (0, 1); ``"cpu"`` or ``""`` → () (CPU only); None → every GPU found."""
    if text is None:
        return None
    text = text.strip()
    if text.lower() in ("", "cpu", "none"):
        return ()
    try:
        pool = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise LorakitError(f"--gpu-pool {text!r}: expected GPU indices like 0,1 (or cpu)") from None
    if len(set(pool)) != len(pool) or any(i < 0 for i in pool):
        raise LorakitError(f"--gpu-pool {text!r}: indices must be distinct and non-negative")
    return pool


def pool_states(devices: Sequence[Device], pool: tuple[int, ...] | None) -> list[GpuState]:
    """The pool's GPUs as placement sees them; a pool index that is not in the inventory is an error."""
    by_index = {device.index: device for device in devices}
    wanted = sorted(by_index) if pool is None else list(pool)
    missing = [i for i in wanted if i not in by_index]
    if missing:
        found = ", ".join(str(i) for i in sorted(by_index)) or "none (CPU only)"
        raise LorakitError(
            f"--gpu-pool: GPU {', '.join(map(str, missing))} not found; detected GPUs: {found}"
        )
    return [GpuState(index=i, total_mb=by_index[i].total_mb, free_mb=by_index[i].free_mb) for i in wanted]
