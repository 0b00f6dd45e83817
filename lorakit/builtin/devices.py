"""Built-in device probe: NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, imported as pynvml).

The inventory is a list of GPUs; an empty list means *CPU only*. Any NVML failure (no driver, no
library, a container without devices) gives the empty list: nothing may crash on a machine without
NVIDIA software. Indices are NVML's (PCI bus order). Each device carries its UUID, which is what jobs get
in ``CUDA_VISIBLE_DEVICES``, and its compute mode.

A GPU in MIG mode cannot run CUDA work itself: it is left out, and each of its MIG devices is listed in its
place, with its own memory and ``MIG-...`` UUID (:class:`lorakit.specs.Device` says how slices are
numbered). ``CUDA_VISIBLE_DEVICES`` is applied by the core to whatever the probes report
(:mod:`lorakit.scheduling.inventory`), not here.
"""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..specs import Device

MIB = 2**20
# NVML's compute modes by name (pynvml's constants; the numbers are NVML's ABI, used if a constant is
# missing). The long-deprecated EXCLUSIVE_THREAD also admits a single process: one job, like EXCLUSIVE_PROCESS.
_COMPUTE_MODES = {
    "NVML_COMPUTEMODE_EXCLUSIVE_PROCESS": (3, "exclusive_process"),
    "NVML_COMPUTEMODE_EXCLUSIVE_THREAD": (1, "exclusive_process"),
    "NVML_COMPUTEMODE_PROHIBITED": (2, "prohibited"),
}


def probe_nvml() -> tuple[list[Device], str | None]:
    """The GPUs NVML sees, and why there are none when the list is empty (None: it simply found none)."""
    try:
        import pynvml
    except ImportError as exc:
        return [], f"nvidia-ml-py is not installed ({exc})"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, OSError from ctypes, ...
        return [], f"NVML: {exc}"
    devices: list[Device] = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            devices.extend(_gpu_devices(pynvml, index))
    except Exception as exc:
        return [], f"NVML: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return devices, None


def _gpu_devices(nvml: Any, index: int) -> list[Device]:
    """GPU ``index`` as schedulable devices: itself, or its MIG slices when it is in MIG mode."""
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except nvml.NVMLError:
        return []  # a GPU that cannot be queried (lost, fallen off the bus) is not schedulable
    if not _mig_enabled(nvml, handle):
        device = _device(nvml, handle, index=index, mode=_compute_mode(nvml, handle))
        return [device] if device is not None else []
    mode = _compute_mode(nvml, handle)
    slices = []
    try:
        count = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except nvml.NVMLError:
        return []
    for mig in range(count):
        try:
            mig_handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, mig)
        except nvml.NVMLError:
            continue  # an empty slot: no GPU instance created there
        device = _device(
            nvml,
            mig_handle,
            index=Device.mig_index_of(index, mig),
            mode=_compute_mode(nvml, mig_handle, default=mode),
            parent=(index, mig),
        )
        if device is not None:
            slices.append(device)
    return slices


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except (nvml.NVMLError, AttributeError):  # not a MIG-capable GPU, or a pynvml without MIG calls
        return False
    return bool(current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))


def _compute_mode(nvml: Any, handle: Any, default: str = "default") -> str:
    try:
        mode = nvml.nvmlDeviceGetComputeMode(handle)
    except (nvml.NVMLError, AttributeError):  # MIG devices may not answer: their GPU's mode holds
        return default
    for constant, (number, name) in _COMPUTE_MODES.items():
        if mode == getattr(nvml, constant, number):
            return name
    return "default"


def _device(
    nvml: Any, handle: Any, *, index: int, mode: str, parent: tuple[int, int] | None = None
) -> Device | None:
    try:
        name = nvml.nvmlDeviceGetName(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    except nvml.NVMLError:
        return None
    try:
        utilization: float | None = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except nvml.NVMLError:
        utilization = None  # MIG devices and some boards do not report it
    try:
        uuid: str | None = _text(nvml.nvmlDeviceGetUUID(handle))
    except (nvml.NVMLError, AttributeError):
        uuid = None
    return Device(
        index=index,
        name=_text(name),
        kind="cuda",
        total_mb=int(memory.total // MIB),
        free_mb=int(memory.free // MIB),
        used_mb=int(memory.used // MIB),
        utilization=utilization,
        uuid=uuid,
        parent_index=parent[0] if parent else None,
        mig_index=parent[1] if parent else None,
        compute_mode=mode,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@hookimpl
def lorakit_detect_devices():
    return probe_nvml()[0]
