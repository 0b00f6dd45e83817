"""The environment snapshot (env_info.json) and the short version string of the index."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = (
    "lorakit",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "tokenizers",
    "numpy",
    "pandas",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, check=False
    )
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_description(device: Any) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        index = device.index or 0
        return f"GPU-{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def peak_memory_mb(device: Any) -> dict[str, float | None]:
    """GPU: torch's allocated/reserved peaks. CPU: the process's peak resident memory."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return {
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
        }
    try:
        import resource

        return {
            "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_reserved_mb": None,
        }
    except ImportError:  # pragma: no cover - Windows
        return {"peak_memory_mb": None, "peak_reserved_mb": None}


def env_info(
    device: Any, plugin_versions: dict[str, str], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "plugins": plugin_versions,
        "device": device_description(device),
        "git_commit": git_commit(),
        **(extra or {}),
    }


def env_version(packages: dict[str, str | None]) -> str:
    return ", ".join(
        f"{name}=={packages[name]}" for name in ("torch", "transformers", "peft") if packages.get(name)
    )
