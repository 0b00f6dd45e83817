"""Where a job goes, and whom it may push aside: pure functions over GPU memory figures.

A job needs its estimate plus a margin on each of its GPUs. A GPU's room is what NVML reports free,
minus what the scheduler has promised to jobs it started recently (their memory does not show in NVML
yet: a fresh process spends seconds importing and loading before it allocates), and never more than the
GPU's total minus everything promised to the scheduler's running jobs. Several jobs share a GPU when
they fit, unless its compute mode allows one process only (``max_jobs``). Among the GPUs that fit, the one
with the most room wins, so jobs spread before they stack. A job of several GPUs never goes to MIG slices:
a CUDA process sees one MIG device at most, and NCCL cannot join them.

Preemption: a job that does not fit may take the room of running jobs of *strictly lower* priority; the
victims are the lowest-priority, most recently started jobs (least work to redo), as few as possible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs

# Room kept free on top of every estimate: 10% of it, at least 256 MiB (fragmentation, estimate error).
MARGIN_FRACTION = 0.10
MARGIN_MIN_MB = 256
# A job's memory shows up in NVML this long after its start at the latest (imports, model load).
SETTLE_S = 120.0


def margin_mb(estimate_mb: int) -> int:
    """The safety margin added to an estimate."""
    return max(MARGIN_MIN_MB, math.ceil(estimate_mb * MARGIN_FRACTION))


def reservation_mb(estimate_mb: int) -> int:
    """What the scheduler reserves per GPU for a job with this estimate: estimate + margin."""
    return estimate_mb + margin_mb(estimate_mb)


@attrs.define(kw_only=True, frozen=True)
class GpuState:
    """One GPU (or MIG slice) of the pool as NVML (or a device plugin) sees it now. Memory in MiB."""

    index: int
    total_mb: int
    free_mb: int
    #: jobs it takes at once (1 in EXCLUSIVE_PROCESS compute mode); None: as many as fit
    max_jobs: int | None = None
    mig: bool = False
    #: what the job's CUDA_VISIBLE_DEVICES names it by (None: its index) and how the queue shows it
    uuid: str | None = None
    label: str = ""


@attrs.define(kw_only=True, frozen=True)
class RunningJob:
    """A job the scheduler started: its GPUs (empty on CPU), its reservation per GPU, its priority rank.

    ``yielding`` jobs were already asked to stop (preempted or cancelled) and are on their way out.
    """

    job_id: int
    rank: int
    devices: tuple[int, ...]
    reserved_mb: int
    started_at: float
    yielding: bool = False


def available_mb(
    gpu: GpuState,
    running: Iterable[RunningJob],
    *,
    now: float,
    gone: frozenset[int] = frozenset(),
    settle_s: float = SETTLE_S,
) -> int:
    """Room on ``gpu`` for a new job, as if the jobs whose ids are in ``gone`` had exited."""
    ours = [job for job in running if gpu.index in job.devices]
    kept = [job for job in ours if job.job_id not in gone]
    left = [job for job in ours if job.job_id in gone]
    if gpu.max_jobs is not None and len(kept) >= gpu.max_jobs:
        return 0  # no room for another process, whatever the memory (a reservation is never 0)
    recent = sum(job.reserved_mb for job in kept if now - job.started_at < settle_s)
    # a settled job that leaves gives back what NVML counts for it (its reservation, near enough)
    returned = sum(job.reserved_mb for job in left if now - job.started_at >= settle_s)
    promised = sum(job.reserved_mb for job in kept)
    return min(gpu.free_mb + returned - recent, gpu.total_mb - promised)


def eligible(gpus: Sequence[GpuState], gpus_needed: int) -> list[GpuState]:
    """The GPUs a job of ``gpus_needed`` GPUs may go to: MIG slices take one-GPU jobs only."""
    return list(gpus) if gpus_needed <= 1 else [gpu for gpu in gpus if not gpu.mig]


def place(
    need_mb: int,
    gpus_needed: int,
    gpus: Sequence[GpuState],
    running: Sequence[RunningJob],
    *,
    now: float,
    settle_s: float = SETTLE_S,
) -> tuple[int, ...] | None:
    """The GPUs (indices, ascending) for a job needing ``need_mb`` on each of ``gpus_needed`` GPUs, or None."""
    room = {
        g.index: available_mb(g, running, now=now, settle_s=settle_s) for g in eligible(gpus, gpus_needed)
    }
    fitting = sorted((i for i in room if room[i] >= need_mb), key=lambda i: (-room[i], i))
    if len(fitting) < gpus_needed:
        return None
    return tuple(sorted(fitting[:gpus_needed]))


def _victim_order(jobs: Iterable[RunningJob]) -> list[RunningJob]:
    return sorted(jobs, key=lambda job: (job.rank, -job.started_at, -job.job_id))


def plan_preemption(
    rank: int,
    need_mb: int,
    gpus_needed: int,
    gpus: Sequence[GpuState],
    running: Sequence[RunningJob],
    *,
    now: float,
    settle_s: float = SETTLE_S,
) -> list[int] | None:
    """Which running jobs must yield so that a job of priority ``rank`` fits.

    :return: the victims' job ids; ``[]`` when the job will fit once the jobs already yielding have
        exited (wait, do not preempt more); None when even every lower-priority job yielding would not
        make room (do not preempt anyone).
    """
    yielding = frozenset(job.job_id for job in running if job.yielding)
    options: list[tuple[tuple[int, int, int], int, list[int]]] = []
    for gpu in eligible(gpus, gpus_needed):
        gone = set(yielding)
        victims: list[int] = []
        candidates = _victim_order(
            job for job in running if gpu.index in job.devices and not job.yielding and job.rank < rank
        )
        while available_mb(gpu, running, now=now, gone=frozenset(gone), settle_s=settle_s) < need_mb:
            if not candidates:
                break
            victim = candidates.pop(0)
            gone.add(victim.job_id)
            victims.append(victim.job_id)
        else:
            cost = (len(victims), sum(job.rank for job in running if job.job_id in victims), gpu.index)
            options.append((cost, gpu.index, victims))
    if len(options) < gpus_needed:
        return None
    chosen = sorted(options)[:gpus_needed]
    return sorted({victim for _cost, _index, victims in chosen for victim in victims})


def plan_slot_preemption(rank: int, running: Sequence[RunningJob], max_parallel: int) -> list[int] | None:
    """CPU jobs (or a full ``--max-parallel``): one slot per job. Same contract as :func:`plan_preemption`."""
    staying = [job for job in running if not job.yielding]
    if len(staying) < max_parallel:
        return []
    candidates = _victim_order(job for job in staying if job.rank < rank)
    needed = len(staying) - max_parallel + 1
    if len(candidates) < needed:
        return None
    return sorted(job.job_id for job in candidates[:needed])
