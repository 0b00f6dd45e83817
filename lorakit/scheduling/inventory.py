"""The device inventory as the scheduler uses it: GPUs from the ``lorakit_detect_devices`` hook, a pool.

Whatever the device plugins report (NVML, a cluster's plugin, the test suite's fake GPUs) goes through the
same filter: ``CUDA_VISIBLE_DEVICES``, read the way CUDA reads it, so a scheduler started inside a
resource manager's grant (Slurm, a container, ``CUDA_VISIBLE_DEVICES=0,2 lorakit scheduler``) hands out
only the GPUs it was given:

* unset: every GPU; ``""``: none (CPU only);
* comma-separated entries, each an index (NVML's, i.e. PCI bus order: ``CUDA_DEVICE_ORDER=PCI_BUS_ID``)
  or a UUID (``GPU-...``, ``MIG-...``) or a prefix of one that names a single device;
* the first entry that names no device (``-1``, an index past the last GPU, an unknown or ambiguous
  UUID) ends the list; a device named twice leaves none, as in CUDA;
* an index of a GPU in MIG mode stands for all its MIG slices (the grant is the whole GPU; each job
  still gets one slice by UUID).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from ..errors import LorakitError
from ..plugins import Plugins
from ..specs import Device
from .placement import GpuState

CVD = "CUDA_VISIBLE_DEVICES"
UUID_PREFIXES = ("GPU-", "MIG-")


def detect_gpus(plugins: Plugins, environ: Mapping[str, str] | None = None) -> list[Device]:
    """The GPUs the device plugins report that ``CUDA_VISIBLE_DEVICES`` leaves visible (empty: CPU only).

    GPUs whose compute mode prohibits CUDA work are included (``lorakit devices`` shows them);
    :func:`pool_states` leaves them out.
    """
    env = os.environ if environ is None else environ
    gpus = [device for device in plugins.detect_devices() if device.kind == "cuda"]
    return visible_devices(gpus, env.get(CVD))


def visible_devices(devices: Sequence[Device], cuda_visible: str | None) -> list[Device]:
    """``devices`` as a process with ``CUDA_VISIBLE_DEVICES=cuda_visible`` sees them, in its order."""
    if cuda_visible is None:
        return list(devices)
    chosen: list[Device] = []
    for entry in (part.strip() for part in cuda_visible.split(",")):
        found = _matching(entry, devices, handles=False)
        # an index may stand for several devices (one GPU's MIG slices), a UUID prefix for one only
        if not found or (entry.startswith(UUID_PREFIXES) and len(found) > 1):
            break  # CUDA ignores everything from the first entry it cannot resolve
        if any(device in chosen for device in found):
            return []  # CUDA: a device named twice makes no device visible
        chosen.extend(found)
    return chosen


def _matching(entry: str | int, devices: Sequence[Device], *, handles: bool) -> list[Device]:
    """The devices ``entry`` names: by index (``handles``: MIG slices' indices too) or by UUID prefix."""
    if isinstance(entry, str) and entry.startswith(UUID_PREFIXES):
        return [device for device in devices if device.uuid and device.uuid.startswith(entry)]
    if isinstance(entry, str):
        # CUDA reads an entry like strtoul: its leading digits; "-1" or no digits names nothing
        digits = re.match(r"\+?(\d+)", entry)
        if digits is None:
            return []
        entry = int(digits.group(1))
    whole = [d for d in devices if d.parent_index is None and d.index == entry]
    slices = [d for d in devices if d.parent_index == entry]
    own = [d for d in devices if handles and d.parent_index is not None and d.index == entry]
    return whole + slices + own


def parse_gpu_pool(text: str | None) -> tuple[int | str, ...] | None:
    """``--gpu-pool``: ``"0,1"`` → (0, 1); UUIDs or their prefixes (``GPU-8f3c``, ``MIG-...``) as strings;
    ``"cpu"`` or ``""`` → () (CPU only); None → every GPU found."""
    if text is None:
        return None
    text = text.strip()
    if text.lower() in ("", "cpu", "none"):
        return ()
    pool: list[int | str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part.startswith(UUID_PREFIXES) and len(part) > 4:
            pool.append(part)
        elif part.isdigit():
            pool.append(int(part))
        else:
            raise LorakitError(
                f"--gpu-pool {text!r}: expected GPU indices or UUIDs like 0,1 or GPU-8f3c (or cpu)"
            )
    if len(set(pool)) != len(pool):
        raise LorakitError(f"--gpu-pool {text!r}: GPUs must be distinct")
    return tuple(pool)


def pool_states(devices: Sequence[Device], pool: tuple[int | str, ...] | None) -> list[GpuState]:
    """The pool's GPUs as placement sees them, by index.

    Every usable GPU when ``pool`` is None (not those in PROHIBITED compute mode); a pool entry that names
    no GPU, several, or a prohibited one, is an error.
    """
    if pool is None:
        chosen = [device for device in devices if device.max_jobs != 0]
    else:
        chosen = _resolve_pool(devices, pool)
    return [_state(device) for device in sorted(chosen, key=lambda d: d.index)]


def _resolve_pool(devices: Sequence[Device], pool: tuple[int | str, ...]) -> list[Device]:
    matches = {entry: _matching(entry, devices, handles=True) for entry in pool}
    missing = [str(entry) for entry, found in matches.items() if not found]
    if missing:
        known = ", ".join(str(d.index) for d in sorted(devices, key=lambda d: d.index)) or "none (CPU only)"
        raise LorakitError(f"--gpu-pool: GPU {', '.join(missing)} not found; detected GPUs: {known}")
    for entry, found in matches.items():
        if isinstance(entry, str) and len(found) > 1:
            names = ", ".join(d.uuid or str(d.index) for d in found)
            raise LorakitError(f"--gpu-pool: {entry} matches several GPUs ({names}); give more of the UUID")
    chosen: list[Device] = []
    for found in matches.values():
        chosen.extend(device for device in found if device not in chosen)
    prohibited = [device.label for device in chosen if device.max_jobs == 0]
    if prohibited:
        raise LorakitError(
            f"--gpu-pool: {', '.join(prohibited)} is in PROHIBITED compute mode: it runs no CUDA work"
        )
    return chosen


def _state(device: Device) -> GpuState:
    return GpuState(
        index=device.index,
        total_mb=device.total_mb,
        free_mb=device.free_mb,
        max_jobs=device.max_jobs,
        mig=device.is_mig,
        uuid=device.uuid,
        label=device.label,
    )
