"""The device inventory: the NVML probe (CPU inventory here), a device plugin answering first, the pool."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from lorakit.builtin import devices as builtin_devices
from lorakit.errors import LorakitError
from lorakit.plugins import Plugins, new_manager
from lorakit.scheduling.inventory import detect_gpus, parse_gpu_pool, pool_states
from lorakit.specs import Device
from lorakit.testing import load_builtins

FAKE_PLUGINS = Path(__file__).parent / "plugins_fake_gpus"


def test_nvml_probe_answers_without_raising():
    found, reason = builtin_devices.probe_nvml()
    assert isinstance(found, list)
    assert builtin_devices.lorakit_detect_devices() == found
    if not found:  # this machine: no NVIDIA driver → CPU only, and the reason is kept for `lorakit devices`
        assert reason
    for device in found:  # a machine with GPUs (the device tool): real figures
        assert device.kind == "cuda" and device.total_mb > 0 and 0 <= device.free_mb <= device.total_mb


def fake_pynvml(monkeypatch, *, init_error: bool = False):
    class NVMLError(Exception):
        pass

    module = types.SimpleNamespace(NVMLError=NVMLError)

    def init():
        if init_error:
            raise NVMLError("Driver Not Loaded")

    def utilization(handle):
        if handle == 1:
            raise NVMLError("Not Supported")
        return types.SimpleNamespace(gpu=37)

    module.nvmlInit = init
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: 2
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetName = lambda h: b"NVIDIA H100" if h == 0 else "NVIDIA A10"
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        total=80 * 2**30, free=60 * 2**30, used=20 * 2**30
    )
    module.nvmlDeviceGetUtilizationRates = utilization
    monkeypatch.setitem(sys.modules, "pynvml", module)


def test_nvml_figures_become_devices(monkeypatch):
    fake_pynvml(monkeypatch)
    found, reason = builtin_devices.probe_nvml()
    assert reason is None
    assert found == [
        Device(index=0, name="NVIDIA H100", total_mb=81920, free_mb=61440, used_mb=20480, utilization=37.0),
        Device(index=1, name="NVIDIA A10", total_mb=81920, free_mb=61440, used_mb=20480, utilization=None),
    ]


def test_nvml_without_driver_is_cpu_only(monkeypatch):
    fake_pynvml(monkeypatch, init_error=True)
    assert builtin_devices.probe_nvml() == ([], "NVML: Driver Not Loaded")


def fake_gpu_plugins(monkeypatch) -> Plugins:
    monkeypatch.syspath_prepend(str(FAKE_PLUGINS))
    import lorakit_fake_gpus

    pm = new_manager(load_entrypoints=False)
    load_builtins(pm)
    pm.register(lorakit_fake_gpus, name="fake_gpus")
    return Plugins(pm)


def test_a_tryfirst_plugin_answers_before_nvml(monkeypatch):
    plugins = fake_gpu_plugins(monkeypatch)
    monkeypatch.setenv("LORAKIT_FAKE_GPUS", "0:8000,1:4000")
    assert [(d.index, d.total_mb, d.free_mb) for d in detect_gpus(plugins)] == [
        (0, 8000, 8000),
        (1, 4000, 4000),
    ]
    monkeypatch.delenv("LORAKIT_FAKE_GPUS")
    assert detect_gpus(plugins) == builtin_devices.probe_nvml()[0]  # None from the plugin: NVML answers


def test_gpu_pool():
    assert parse_gpu_pool(None) is None
    assert parse_gpu_pool("0, 2") == (0, 2)
    assert parse_gpu_pool("cpu") == ()
    with pytest.raises(LorakitError, match="expected GPU indices"):
        parse_gpu_pool("zero")
    found = [
        Device(index=0, name="a", total_mb=100, free_mb=50),
        Device(index=1, name="b", total_mb=200, free_mb=200),
    ]
    assert [g.index for g in pool_states(found, None)] == [0, 1]
    assert [(g.index, g.free_mb) for g in pool_states(found, (1,))] == [(1, 200)]
    with pytest.raises(LorakitError, match="GPU 3 not found; detected GPUs: 0, 1"):
        pool_states(found, (0, 3))


def test_devices_command(cli):
    result = cli("devices", "--json")
    assert result.returncode == 0, result.stderr
    plain = cli("devices")
    assert plain.returncode == 0
    if result.stdout.strip() == "[]":
        assert plain.stdout.startswith("no GPU found: jobs run on CPU")
