"""The device inventory: the NVML probe (CPU inventory here; MIG and compute modes through a fake pynvml),
a device plugin answering first, CUDA_VISIBLE_DEVICES applied to whatever the plugins report, the pool."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from lorakit.builtin import devices as builtin_devices
from lorakit.errors import LorakitError
from lorakit.plugins import Plugins, new_manager
from lorakit.scheduling.inventory import detect_gpus, parse_gpu_pool, pool_states, visible_devices
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
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
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
    assert parse_gpu_pool("GPU-8f3c,1,MIG-5a") == ("GPU-8f3c", 1, "MIG-5a")
    for bad in ("zero", "-1", "GPU-"):
        with pytest.raises(LorakitError, match="expected GPU indices or UUIDs"):
            parse_gpu_pool(bad)
    with pytest.raises(LorakitError, match="distinct"):
        parse_gpu_pool("1,1")
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


def fake_mig_pynvml(monkeypatch):
    """GPU 0: EXCLUSIVE_PROCESS. GPU 1: MIG mode, slots 0 and 2 hold slices, slot 1 is empty. GPU 2: PROHIBITED."""

    class NVMLError(Exception):
        pass

    GIB = 2**30
    module = types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_DEVICE_MIG_ENABLE=1,
        NVML_COMPUTEMODE_DEFAULT=0,
        NVML_COMPUTEMODE_EXCLUSIVE_THREAD=1,
        NVML_COMPUTEMODE_PROHIBITED=2,
        NVML_COMPUTEMODE_EXCLUSIVE_PROCESS=3,
    )
    gpus = {0: ("H100", 80, 3), 1: ("A100", 40, 0), 2: ("A10", 24, 2)}
    slices = {(1, 0): ("A100 MIG 3g.20gb", 20), (1, 2): ("A100 MIG 1g.5gb", 5)}

    def not_supported(*args):
        raise NVMLError("Not Supported")

    def mig_handle(handle, slot):
        if (handle, slot) not in slices:
            raise NVMLError("Not Found")
        return (handle, slot)

    def memory(handle):
        total = (slices[handle][1] if isinstance(handle, tuple) else gpus[handle][1]) * GIB
        return types.SimpleNamespace(total=total, free=total - GIB, used=GIB)

    def compute_mode(handle):
        if isinstance(handle, tuple):
            raise NVMLError("Not Supported")  # a slice inherits its GPU's mode
        return gpus[handle][2]

    module.nvmlInit = module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: 3
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetMigMode = lambda h: [1, 1] if h == 1 else not_supported()
    module.nvmlDeviceGetMaxMigDeviceCount = lambda h: 3
    module.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    module.nvmlDeviceGetName = lambda h: slices[h][0] if isinstance(h, tuple) else gpus[h][0]
    module.nvmlDeviceGetMemoryInfo = memory
    module.nvmlDeviceGetUtilizationRates = lambda h: (
        not_supported() if isinstance(h, tuple) else (types.SimpleNamespace(gpu=5))
    )
    module.nvmlDeviceGetUUID = lambda h: f"MIG-{h[0]}{h[1]}aa" if isinstance(h, tuple) else f"GPU-{h}0ff"
    module.nvmlDeviceGetComputeMode = compute_mode
    monkeypatch.setitem(sys.modules, "pynvml", module)


def test_nvml_lists_mig_slices_instead_of_their_gpu_and_reads_compute_modes(monkeypatch):
    fake_mig_pynvml(monkeypatch)
    found, reason = builtin_devices.probe_nvml()
    assert reason is None
    assert [(d.index, d.name, d.uuid, d.parent_index, d.mig_index, d.compute_mode) for d in found] == [
        (0, "H100", "GPU-00ff", None, None, "exclusive_process"),
        (200, "A100 MIG 3g.20gb", "MIG-10aa", 1, 0, "default"),
        (202, "A100 MIG 1g.5gb", "MIG-12aa", 1, 2, "default"),
        (2, "A10", "GPU-20ff", None, None, "prohibited"),
    ]
    # each slice has its own memory; MIG devices report no utilization
    assert [(d.total_mb, d.free_mb, d.utilization) for d in found[1:3]] == [
        (20480, 19456, None),
        (5120, 4096, None),
    ]
    assert [d.max_jobs for d in found] == [1, None, None, 0]
    assert [d.label for d in found] == ["GPU-0", "GPU-1/MIG-0", "GPU-1/MIG-2", "GPU-2"]
    # the pool: a prohibited GPU takes no job; the slices are placeable, one-GPU jobs only
    states = pool_states(found, None)
    assert [(g.index, g.total_mb, g.max_jobs, g.mig, g.uuid) for g in states] == [
        (0, 81920, 1, False, "GPU-00ff"),
        (200, 20480, None, True, "MIG-10aa"),
        (202, 5120, None, True, "MIG-12aa"),
    ]
    with pytest.raises(LorakitError, match="GPU-2 is in PROHIBITED compute mode"):
        pool_states(found, (2,))


def test_the_nvml_probe_goes_through_cuda_visible_devices(monkeypatch):
    fake_mig_pynvml(monkeypatch)
    pm = new_manager(load_entrypoints=False)
    load_builtins(pm)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-12,0")
    assert [d.index for d in detect_gpus(Plugins(pm))] == [202, 0]


def inventory() -> list[Device]:
    mig = Device.mig_index_of
    return [
        Device(index=0, name="a", total_mb=8000, uuid="GPU-8f3c1111"),
        Device(index=1, name="b", total_mb=8000, uuid="GPU-8f3c2222"),
        Device(index=2, name="c", total_mb=8000, uuid="GPU-aa00"),
        Device(index=mig(3, 0), name="d0", total_mb=4000, uuid="MIG-d0", parent_index=3, mig_index=0),
        Device(index=mig(3, 1), name="d1", total_mb=4000, uuid="MIG-d1", parent_index=3, mig_index=1),
        Device(index=4, name="e", total_mb=8000),  # no UUID: a fake device
    ]


@pytest.mark.parametrize(
    ("cuda_visible", "expected"),
    [
        (None, [0, 1, 2, 400, 401, 4]),  # unset: every GPU
        ("", []),  # empty: CPU only
        ("0,2", [0, 2]),
        ("2, 0", [2, 0]),  # CUDA's order is the variable's
        ("GPU-aa00,GPU-8f3c1111", [2, 0]),  # full UUIDs
        ("GPU-8f3c2,4", [1, 4]),  # a prefix naming one GPU
        ("MIG-d1", [401]),
        ("3", [400, 401]),  # a GPU in MIG mode by index: its slices
        ("0,-1,2", [0]),  # -1 ends the list
        ("1,7,2", [1]),  # so does an index past the last GPU
        ("2,GPU-8f3c,0", [2]),  # and an ambiguous prefix
        ("2,GPU-ffff,0", [2]),  # and an unknown UUID
        ("1,1", []),  # a device named twice: none
        ("400", []),  # a MIG slice's lorakit index is no CUDA index
        ("1gpu", [1]),  # CUDA reads indices like strtoul
    ],
)
def test_cuda_visible_devices_is_read_as_cuda_reads_it(cuda_visible, expected):
    assert [d.index for d in visible_devices(inventory(), cuda_visible)] == expected


def test_fake_gpus_are_filtered_by_the_same_code(monkeypatch):
    plugins = fake_gpu_plugins(monkeypatch)
    monkeypatch.setenv(
        "LORAKIT_FAKE_GPUS", "0:8000:uuid=GPU-aaa1,1:8000:uuid=GPU-bbb2,2/0:4000:uuid=MIG-ccc3:free=3000"
    )
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [d.index for d in detect_gpus(plugins)] == [0, 1, 300]
    slice_ = detect_gpus(plugins)[2]
    assert (slice_.parent_index, slice_.mig_index, slice_.total_mb, slice_.free_mb) == (2, 0, 4000, 3000)
    for cuda_visible, expected in [("1", [1]), ("GPU-bbb", [1]), ("MIG-ccc3,0", [300, 0]), ("", [])]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible)
        assert [d.index for d in detect_gpus(plugins)] == expected, cuda_visible
    assert detect_gpus(plugins, environ={}) != []  # an explicit environment wins


def test_gpu_pool_by_uuid_and_index():
    found = inventory()
    assert [g.index for g in pool_states(found, ("GPU-aa", 0))] == [0, 2]
    assert [g.index for g in pool_states(found, ("MIG-d1",))] == [401]
    assert [(g.index, g.mig) for g in pool_states(found, (3,))] == [(400, True), (401, True)]
    assert [g.index for g in pool_states(found, (401, 400))] == [400, 401]  # slices by lorakit index too
    with pytest.raises(LorakitError, match="GPU-8f3c matches several GPUs"):
        pool_states(found, ("GPU-8f3c",))
    with pytest.raises(LorakitError, match="GPU GPU-0000 not found"):
        pool_states(found, ("GPU-0000",))
    # jobs are named by UUID; a device without one by its index
    assert [(g.uuid, g.label) for g in pool_states(found, (4, 400))] == [
        (None, "GPU-4"),
        ("MIG-d0", "GPU-3/MIG-0"),
    ]


def test_devices_command_applies_cuda_visible_devices(cli):
    fake = {"PYTHONPATH": str(FAKE_PLUGINS), "LORAKIT_FAKE_GPUS": "0:8000:uuid=GPU-aaa,1/0:4000:uuid=MIG-bbb"}
    shown = cli("devices", "--json", env={**fake, "CUDA_VISIBLE_DEVICES": "MIG-bbb"})
    assert shown.returncode == 0, shown.stderr
    assert [(d["index"], d["uuid"], d["parent_index"]) for d in json.loads(shown.stdout)] == [
        (100 * 2, "MIG-bbb", 1)
    ]
    table = cli("devices", env={**fake, "CUDA_VISIBLE_DEVICES": "0"})
    assert "GPU-aaa" in table.stdout and "MIG-bbb" not in table.stdout and "uuid" in table.stdout
    hidden = cli("devices", env={**fake, "CUDA_VISIBLE_DEVICES": ""})
    assert hidden.stdout.strip() == "no GPU found: jobs run on CPU (CUDA_VISIBLE_DEVICES='' hides every GPU)"
