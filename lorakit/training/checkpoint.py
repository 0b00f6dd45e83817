"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and loop position.

Each checkpoint is written into a temp folder and renamed into place, so the newest *complete* one
always wins. Weights are safetensors; optimizer/scheduler/RNG load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import shutil
import uuid
from pathlib import Path
from typing import Any

from ..fsutil import read_json, write_json_atomic

STATE_FILE = "trainer_state.json"
BEST_FILE = "best-trainable.safetensors"
KEEP = 2


def rng_state(device: Any = None) -> dict[str, Any]:
    """This process's RNG state (each rank of a distributed run has its own).

    On CUDA only the job's own device's generator is kept: a run checkpointed with 8 visible GPUs must
    resume with 1, and a GPU checkpoint on a CPU.
    """
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if getattr(device, "type", None) == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(
    checkpoints: Path,
    *,
    global_step: int,
    weights: dict[str, Any],
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    rank_rng: list[dict[str, Any]] | None = None,
    scaler: Any = None,
) -> Path:
    import torch
    from safetensors.torch import save_file

    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"step-{global_step:08d}"
    tmp = checkpoints / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:  # fp16's loss scale and growth tracker: without them a resume is not exact
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    # one RNG state per rank: exact resume needs every rank's dropout stream back
    torch.save({"ranks": rank_rng or [rng_state()]}, tmp / "rng.pt")
    write_json_atomic(
        tmp / STATE_FILE, {**state, "global_step": global_step, "python_random": random.getstate()}
    )
    if final.exists():  # the same step checkpointed twice (epoch end right after a step checkpoint)
        shutil.rmtree(final)
    tmp.rename(final)
    for old in complete_checkpoints(checkpoints)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints.glob(".tmp-*"):  # left by a crash mid-write (folders, or a best-weights file)
        if stale == tmp:
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    return final


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.glob("step-*") if (p / STATE_FILE).is_file() and (p / "rng.pt").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    found = complete_checkpoints(checkpoints)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything a checkpoint holds, on the CPU (``map_location``): whatever device wrote it, the
    optimizer moves its state onto its parameters' device as it loads."""
    import torch
    from safetensors.torch import load_file

    state = read_json(path / STATE_FILE)
    scaler = path / "scaler.pt"
    return {
        "weights": load_file(str(path / "trainable.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        "scheduler": torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True),
        "rng": torch.load(path / "rng.pt", map_location="cpu", weights_only=True),
        "scaler": torch.load(scaler, map_location="cpu", weights_only=True) if scaler.is_file() else None,
        "state": state,
    }


def restore_rng(rng: dict[str, Any], python_random: Any, rank: int = 0, device: Any = None) -> None:
    """Put this rank's RNG state back; the CUDA generator only when this run is on CUDA too."""
    import torch

    ranks = rng["ranks"]
    if rank >= len(ranks):
        raise RuntimeError(f"checkpoint holds RNG states of {len(ranks)} rank(s); this is rank {rank}")
    rng = ranks[rank]
    torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda")
    if cuda is not None and getattr(device, "type", None) == "cuda":
        if isinstance(cuda, (list, tuple)):  # checkpoints before 0.2 kept every visible GPU's state
            cuda = cuda[min(device.index or 0, len(cuda) - 1)] if cuda else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
    version, internal, gauss = python_random
    random.setstate((version, tuple(internal), gauss))


def check_world_size(path: Path, saved: int, world: int) -> None:
    """A checkpoint resumes exactly only with the number of processes that wrote it (batch order and RNG
    streams depend on it)."""
    from ..errors import ResumeError

    if saved != world:
        raise ResumeError(
            f"{path}: saved by {saved} process(es), resuming with {world}; "
            "exact resume needs the same number of processes"
        )


def save_best(checkpoints: Path, weights: dict[str, Any]) -> None:
    """The best epoch's trainable weights, as trained (lorakit's own names, not peft's): the reload
    check compares the saved adapter against these, so a wrong adapter file cannot pass."""
    from safetensors.torch import save_file

    checkpoints.mkdir(parents=True, exist_ok=True)
    tmp = checkpoints / f".tmp-{BEST_FILE}-{uuid.uuid4().hex[:8]}"
    save_file(weights, str(tmp))
    tmp.replace(checkpoints / BEST_FILE)


def load_best(checkpoints: Path) -> dict[str, Any] | None:
    from safetensors.torch import load_file

    path = checkpoints / BEST_FILE
    return load_file(str(path)) if path.is_file() else None
