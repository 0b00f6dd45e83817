"""Built-in device probe: NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, imported as pynvml).

The inventory is a list of GPUs; an empty list means *CPU only*. Any NVML failure (no driver, no
library, a container without devices) gives the empty list: nothing may crash on a machine without
NVIDIA software. Indices are NVML's (PCI bus order); the scheduler sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
in every job so that ``CUDA_VISIBLE_DEVICES`` means the same GPUs.
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import Device

MIB = 2**20


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
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except pynvml.NVMLError:
                continue  # a GPU that cannot be queried (lost, MIG parent) is not schedulable
            try:
                utilization: float | None = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:
                utilization = None
            devices.append(
                Device(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    kind="cuda",
                    total_mb=int(memory.total // MIB),
                    free_mb=int(memory.free // MIB),
                    used_mb=int(memory.used // MIB),
                    utilization=utilization,
                )
            )
    except Exception as exc:
        return [], f"NVML: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return devices, None


@hookimpl
def lorakit_detect_devices():
    return probe_nvml()[0]
