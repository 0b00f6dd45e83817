"""The whole environment of a run: every installed distribution (``requirements.lock``) and the hardware.

``requirements.lock`` is what ``pip freeze`` would list, read through ``importlib.metadata`` (no
subprocess): one ``name==version`` per installed distribution, sorted, after comment lines giving Python,
the platform, the CPU and (where present) CUDA, the driver and the GPUs. ``pip install -r`` accepts it.
:func:`diff` compares two such snapshots (``lorakit env diff``). Nothing here imports torch unless asked
for the GPU facts of the current machine.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HARDWARE_KEYS = ("python", "platform", "cpu", "cuda", "driver", "gpus")


def canonical(name: str) -> str:
    """PEP 503 normalized distribution name (``Foo_Bar`` → ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """``{canonical name: version}`` of every installed distribution (the first one found wins, as
    Python's import system would pick it)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name and canonical(name) not in found:
            found[canonical(name)] = dist.version
    return dict(sorted(found.items()))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(*, with_gpu: bool = True) -> dict[str, Any]:
    """Python, platform, CPU model; CUDA version, driver and GPU names where torch sees a GPU."""
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cuda": None,
        "driver": None,
        "gpus": [],
    }
    if with_gpu:
        import torch

        if torch.cuda.is_available():
            facts["cuda"] = torch.version.cuda
            facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            facts["driver"] = _driver_version()
    return facts


def _driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no NVML: the driver is unknown, not an error
        return None


def lock_text(packages: dict[str, str], facts: dict[str, Any]) -> str:
    """``requirements.lock``: the hardware as comments, then one ``name==version`` per distribution."""
    head = ["# The environment of this run (lorakit); pip install -r requirements.lock"]
    head += [f"# {key}: {_show(facts.get(key))}" for key in HARDWARE_KEYS]
    return "\n".join(head + [f"{name}=={version}" for name, version in packages.items()]) + "\n"


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def parse_lock(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """``(packages, hardware)`` of a ``requirements.lock``; lines it does not know are skipped."""
    packages: dict[str, str] = {}
    facts: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep and key.strip() in HARDWARE_KEYS:
                facts[key.strip()] = value.strip()
            continue
        name, sep, version = line.partition("==")
        if sep and name.strip():
            packages[canonical(name.strip())] = version.strip()
    return packages, facts


def current() -> tuple[dict[str, str], dict[str, str]]:
    """This machine's snapshot, in the shape :func:`parse_lock` gives."""
    return parse_lock(lock_text(installed(), hardware()))


def diff(old: tuple[dict[str, str], dict[str, str]], new: tuple[dict[str, str], dict[str, str]]) -> list[str]:
    """Lines: ``+ name==v`` added, ``- name==v`` removed, ``~ name: a -> b`` changed, ``hardware key: a -> b``."""
    (old_pk, old_hw), (new_pk, new_hw) = old, new
    lines = [f"+ {n}=={new_pk[n]}" for n in sorted(set(new_pk) - set(old_pk))]
    lines += [f"- {n}=={old_pk[n]}" for n in sorted(set(old_pk) - set(new_pk))]
    lines += [
        f"~ {n}: {old_pk[n]} -> {new_pk[n]}"
        for n in sorted(set(old_pk) & set(new_pk))
        if old_pk[n] != new_pk[n]
    ]
    lines += _hardware_lines(old_hw, new_hw, HARDWARE_KEYS)
    return lines


def _hardware_lines(old: dict[str, str], new: dict[str, str], keys: Iterable[str]) -> list[str]:
    return [
        f"hardware {key}: {old.get(key, 'unknown')} -> {new.get(key, 'unknown')}"
        for key in keys
        if key in old and key in new and old[key] != new[key]
    ]
