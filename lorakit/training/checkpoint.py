"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and loop position.

Each checkpoint is written into a temp folder and renamed into place, so a ``step-*`` folder is always
complete and the newest one wins. Weights are safetensors; optimizer/scheduler/RNG load with
``torch.load(weights_only=True)``.

A resume checks the newest checkpoint's files before it touches the experiment folder
(:func:`check_checkpoint`, no torch): a damaged one is ``<path>: damaged (<reason>)``, exit 2. It is not
skipped for an older one: that would redo work without saying so, and the damaged folder (the user's
evidence) would later be pruned.
"""

from __future__ import annotations

import random
import shutil
import uuid
from pathlib import Path
from typing import Any

from .. import readback as rb
from ..fsutil import write_json_atomic

STATE_FILE = "trainer_state.json"
BEST_FILE = "best-trainable.safetensors"
WEIGHTS_FILE = "trainable.safetensors"
TORCH_FILES = ("optimizer.pt", "scheduler.pt", "rng.pt")  # and scaler.pt, written in fp16 only
KEEP = 2


def _python_random(value: Any, where: str) -> str | None:
    """``random.getstate()`` through JSON: ``[version, [625 ints], gauss or null]``."""
    if (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], int)
        and isinstance(value[1], list)
        and len(value[1]) == 625  # the Mersenne Twister's 624 words and its position
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value[1])
    ):
        return None
    return f"key {where!r}: not a Python random state"


_COUNT = rb.INTEGER
# LoopState as saved (lorakit.training.loop.LoopState)
LOOP_CHECK = rb.fields(
    {
        "epoch": _COUNT,
        "batch": _COUNT,
        "global_step": _COUNT,
        "history": rb.dict_of(rb.OBJECT),
        "best_epoch": rb.optional(_COUNT),
        "best_value": rb.optional(rb.NUMBER),
        "epochs_without_best": _COUNT,
        "train_loss_sum": rb.NUMBER,
        "train_loss_batches": _COUNT,
        "skipped_steps": _COUNT,
    },
    required=("epoch", "batch", "global_step"),
)
STATE_CHECK = rb.fields(
    {
        "global_step": _COUNT,
        "python_random": _python_random,
        "loop": LOOP_CHECK,
        "world_size": rb.optional(_COUNT),
        "precision": rb.optional(rb.STRING),
        "fingerprints": rb.optional(rb.OBJECT),
    },
    required=("global_step", "python_random", "loop"),
)


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
    save_file(weights, str(tmp / WEIGHTS_FILE))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:  # fp16's loss scale and growth tracker: without them a resume is not exact
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    # one RNG state per rank: exact resume needs every rank's dropout stream back
    torch.save({"ranks": rank_rng or [rng_state()]}, tmp / "rng.pt")
    write_json_atomic(
        tmp / STATE_FILE, {**state, "global_step": global_step, "python_random": random.getstate()}
    )
    if final.exists():  # the same step checkpointed twice (epoch end right after a step checkpoint):
        # swap by renames, so that no moment leaves a half-deleted step folder behind
        old = checkpoints / f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
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
    """The ``step-*`` folders, oldest first (each was renamed into place whole; temp folders are not listed)."""
    if not checkpoints.is_dir():
        return []
    return sorted((p for p in checkpoints.glob("step-*") if p.is_dir()), key=lambda p: p.name)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint, its files checked (:func:`check_checkpoint`); None when there is none.

    Raises :class:`~lorakit.errors.DamagedFile` when it is damaged.
    """
    found = complete_checkpoints(checkpoints)
    if not found:
        return None
    check_checkpoint(found[-1])
    if (checkpoints / BEST_FILE).exists():  # read when training ends: checked now, before any work
        rb.safetensors_header(checkpoints / BEST_FILE)
    return found[-1]


def check_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file of the checkpoint ``path`` without loading a tensor (no torch): trainer_state.json
    parsed and of the right shape, the weights' safetensors header against the file's size, each torch
    file's zip directory. Returns the trainer state."""
    state: dict[str, Any] = rb.read_json(path / STATE_FILE, STATE_CHECK)
    rb.safetensors_header(path / WEIGHTS_FILE)
    for name in TORCH_FILES:
        rb.check_torch_file(path / name)
    if (path / "scaler.pt").exists():
        rb.check_torch_file(path / "scaler.pt")
    return state


def _torch_load(path: Path, check: rb.Check) -> Any:
    import pickle

    import torch

    rb.check_torch_file(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        raise rb.load_failure(path, exc, "torch cannot load it") from None
    return rb.validate(path, data, check)


def _rng_check(value: Any, where: str) -> str | None:
    import torch

    ranks = value.get("ranks") if isinstance(value, dict) else None
    if not isinstance(ranks, list) or not ranks:
        return "not an RNG state: no 'ranks' list"
    for rank in ranks:
        if not isinstance(rank, dict) or not isinstance(rank.get("torch"), torch.Tensor):
            return "not an RNG state: a rank without a torch generator state"
    return None


_OPTIMIZER_CHECK = rb.fields(
    {"state": rb.OBJECT, "param_groups": rb.list_of(rb.OBJECT)}, required=("state", "param_groups")
)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything a checkpoint holds, on the CPU (``map_location``): whatever device wrote it, the
    optimizer moves its state onto its parameters' device as it loads. Each file is checked first: a
    damaged one raises :class:`~lorakit.errors.DamagedFile`."""
    import attrs
    from safetensors.torch import load_file

    from .loop import LoopState

    state = check_checkpoint(path)
    unknown = sorted(set(state["loop"]) - set(attrs.fields_dict(LoopState)))
    if unknown:
        raise rb.DamagedContent(path / STATE_FILE, f"key 'loop.{unknown[0]}' unknown")
    weights = path / WEIGHTS_FILE
    try:
        loaded = load_file(str(weights))
    except Exception as exc:  # safetensors' own error type is not importable without its Rust module
        raise rb.load_failure(weights, exc, "safetensors cannot load it") from None
    scaler = path / "scaler.pt"
    return {
        "weights": loaded,
        "optimizer": _torch_load(path / "optimizer.pt", _OPTIMIZER_CHECK),
        "scheduler": _torch_load(path / "scheduler.pt", rb.OBJECT),
        "rng": _torch_load(path / "rng.pt", _rng_check),
        "scaler": _torch_load(scaler, rb.OBJECT) if scaler.is_file() else None,
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
    """The best epoch's trainable weights (None when there are none: a run resumed from an older lorakit)."""
    from safetensors.torch import load_file

    path = checkpoints / BEST_FILE
    if not path.exists():
        return None
    rb.safetensors_header(path)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors' own error type is not importable without its Rust module
        raise rb.load_failure(path, exc, "safetensors cannot load it") from None
