"""Process control that holds on GPU boxes: a job's whole tree dies when it is killed, a failing rank is
named with its reason, and an out-of-memory error on any rank of a DDP job leads to the OOM retry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_train import outputs, project  # noqa: F401  (fixture)

from lorakit import proctree
from lorakit.builtin.executors import LocalExecutor
from lorakit.scheduling.executor import LaunchSpec
from lorakit.scheduling.outcome import classify, is_oom, is_oom_text, oom_retry
from lorakit.scheduling.queue import JobQueue

#: the test plugin with the loss ``rank1_oom`` (an OOM raised on rank 1 only)
FAULTS = Path(__file__).parent / "plugins_faults"


def _wait_for(check, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_tree_reaches_grandchildren_in_their_own_sessions():
    # a child, a grandchild in a new session, and a great-grandchild under a child shell
    script = "sleep 60 & setsid sleep 60 & sh -c 'sleep 60 & wait' & wait"
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    _wait_for(lambda: len(proctree.descendants(proc.pid)) >= 4, "the tree", timeout=10)
    tree = [proc.pid, *proctree.descendants(proc.pid)]
    # a new session is outside the job's process group: killpg alone would miss it
    assert len({os.getsid(pid) for pid in tree}) >= 2
    killed = proctree.kill_tree(proc.pid)
    assert set(tree) <= set(killed)
    proc.wait(timeout=10)
    assert proctree.wait_gone(tree, timeout=10) == []


def test_kill_tree_catches_a_tree_that_keeps_forking():
    # each shell forks a new sleeper every few ms: freezing the tree first leaves nothing to respawn
    script = "while true; do sleep 60 & sleep 0.01; done"
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    _wait_for(lambda: len(proctree.descendants(proc.pid)) >= 5, "the sleepers", timeout=10)
    killed = proctree.kill_tree(proc.pid)
    proc.wait(timeout=10)
    assert proctree.wait_gone(killed, timeout=10) == []
    assert proctree.descendants(proc.pid) == []


PARENT = """
import subprocess, sys, time
from lorakit.proctree import pdeathsig_preexec
child = subprocess.Popen(["sleep", "60"], preexec_fn=pdeathsig_preexec())
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_its_parent_even_by_sigkill():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert proctree.alive(child)
    parent.kill()  # SIGKILL: nothing in the parent runs
    parent.wait(timeout=10)
    assert proctree.wait_gone([child], timeout=10) == []


def test_catches_reads_the_installed_handlers():
    assert proctree.catches(os.getpid(), signal.SIGINT)  # Python's KeyboardInterrupt handler
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)
    try:
        assert proctree.catches(os.getpid(), signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert not proctree.catches(os.getpid(), signal.SIGUSR2)


@pytest.mark.parametrize(
    "text",
    [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "RuntimeError: CUDA error: out of memory",
        "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "RuntimeError: cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
        "host:123:456 [1] NCCL WARN Failed to CUDA calloc 6291456 bytes",
        "host:123:456 [1] NCCL WARN Cuda failure 2 'out of memory'",
        "ncclUnhandledCudaError: Call to CUDA function failed. Last error: Cuda failure 'out of memory'",
        "torch.distributed.DistBackendError: NCCL error: ncclSystemError ... out of memory",
        "Error: rank 3: OutOfMemoryError: HIP out of memory. Tried to allocate 20.00 MiB",
    ],
)
def test_oom_markers(text):
    assert is_oom_text(text)
    assert is_oom({"error": text}, []) and is_oom(None, ["noise", text])


@pytest.mark.parametrize(
    "text",
    [
        "torch.distributed.DistBackendError: NCCL error: ncclSystemError: System call (e.g. socket, malloc) "
        "or external library call failed or device error. Connection reset by peer",
        "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer",
        "ValueError: memory_mb must be positive",
    ],
)
def test_not_oom(text):
    assert not is_oom_text(text)


@pytest.mark.parametrize(
    ("batch", "accum", "smaller", "more"),
    [(16, 1, 8, 2), (8, 3, 4, 6), (6, 1, 3, 2), (9, 1, 3, 3), (7, 2, 1, 14)],
)
def test_the_oom_retry_keeps_the_effective_batch(project, batch, accum, smaller, more):  # noqa: F811
    config = project("retry", tasks=1, batch_size=batch, grad_accum=accum)
    job = JobQueue(outputs(project)).submit(exp_id="retry", config_path=str(config), gpus=2)
    overrides, note = oom_retry(job)
    assert overrides == (f"train.batch_size={smaller}", f"train.grad_accum={more}")
    assert smaller * more == batch * accum and "same effective batch" in note


def _ranks(root: int) -> list[int]:
    """The torchrun workers below ``root`` (torchrun's own command line names lorakit too)."""
    found = []
    for pid in proctree.descendants(root):
        line = proctree.cmdline(pid)
        if b"-m\0lorakit\0train" in line and b"torch.distributed.run" not in line:
            found.append(pid)
    return found


def _nproc2_spec(config: Path, out: Path, log: Path) -> LaunchSpec:
    argv = (sys.executable, "-m", "lorakit", "train", str(config), "--outputs", str(out), "--nproc", "2")
    env = {"LORAKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return LaunchSpec(job_id=1, name=config.stem, argv=argv, env=env, cwd=None, log_path=str(log))


def test_killing_an_nproc2_job_like_the_scheduler_leaves_no_process(project, tmp_path):  # noqa: F811
    out = outputs(project)
    config = project("killme", tasks=2, epochs=50, batch_size=4)
    job_log = tmp_path / "job.log"
    handle = LocalExecutor().start(_nproc2_spec(config, out, job_log))
    assert handle.pid is not None

    def ranks() -> list[int]:
        assert handle.poll() is None, job_log.read_text(encoding="utf-8")
        return _ranks(handle.pid)

    _wait_for(lambda: len(ranks()) >= 2, "two ranks")
    log = out / "killme" / "train.log"
    _wait_for(lambda: log.exists() and " step " in log.read_text(encoding="utf-8"), "the ranks to train")
    tree = [handle.pid, *proctree.descendants(handle.pid)]
    assert len(tree) >= 4  # launcher, torchrun, two ranks (in sessions of their own)
    handle.signal(signal.SIGKILL)
    assert handle.wait(timeout=30) == -signal.SIGKILL
    assert proctree.wait_gone(tree, timeout=10) == [], "processes of the job survived its kill"


def test_oom_on_rank_1_is_named_recorded_and_retried(project, cli):  # noqa: F811
    out = outputs(project)
    config = project("oom1", tasks=1, epochs=1, batch_size=8)
    path = os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")]))
    result = cli(
        "train", str(config), "--outputs", str(out), "--nproc", "2", "--set", 'train.loss="rank1_oom"',
        env={"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "LORAKIT_NO_PROGRESS": "1"},
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Error: rank 1: OutOfMemoryError: CUDA out of memory (fake)" in result.stderr
    run = json.loads((out / "oom1" / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "failed"
    assert run["error"].startswith("rank 1: OutOfMemoryError: CUDA out of memory")
    index = json.loads((out / "experiment_index.json").read_text(encoding="utf-8"))
    assert index["experiments"]["oom1"]["status"] == "failed"

    # the scheduler's reading of that exit: one retry, half the batch, twice the accumulation, on the same
    # two GPUs; from run.json, and from the job's log alone (where the launcher names every failing rank)
    job = JobQueue(out).submit(exp_id="oom1", config_path=str(config), gpus=2)
    outcome = classify(job, 1, outputs=out, stop_reason=None, log_path=None)
    assert outcome.state == "queued" and outcome.start_mode == "force"
    assert outcome.extra_overrides == ("train.batch_size=4", "train.grad_accum=2")
    log = out / "job.log"
    log.write_text(result.stdout + result.stderr, encoding="utf-8")
    (out / "oom1" / "run.json").write_text(
        json.dumps({**run, "error": "no word of memory"}), encoding="utf-8"
    )
    outcome = classify(job, 1, outputs=out, stop_reason=None, log_path=str(log))
    assert outcome.state == "queued" and outcome.extra_overrides == (
        "train.batch_size=4",
        "train.grad_accum=2",
    )


SILENT_KILL = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from lorakit import proctree
    from lorakit.training.distributed import launch

    # once the ranks train, rank 1 is killed by SIGKILL (as the kernel's OOM killer would): no error of its own
    train_log = Path(sys.argv[-1]).with_name("train.log")

    def killer():
        while not (train_log.exists() and " step " in train_log.read_text(encoding="utf-8")):
            time.sleep(0.05)
        for pid in proctree.descendants(os.getpid()):
            line = proctree.cmdline(pid)
            if b"lorakit\\0train" in line and b"torch.distributed" not in line:
                if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\\0"):
                    os.kill(pid, signal.SIGKILL)

    import threading
    threading.Thread(target=killer, daemon=True).start()
    sys.exit(launch(2, sys.argv[1:-1], Path(sys.argv[-1])))
    """
)


def test_a_rank_killed_silently_fails_the_job(project, tmp_path):  # noqa: F811
    out = outputs(project)
    config = project("silent", tasks=1, epochs=50, batch_size=4)
    run_json = out / "silent" / "run.json"
    result = subprocess.run(
        [sys.executable, "-c", SILENT_KILL, str(config), f"--outputs={out}", str(run_json)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "LORAKIT_NO_PROGRESS": "1"},
    )
    assert result.returncode == 1, result.stderr[-3000:]
    run = json.loads(run_json.read_text(encoding="utf-8"))
    assert run["status"] == "failed", run  # not "running", not "preempted": a resume would not help
    # rank 0 lost its peer, rank 1 said nothing: rank 1 is the cause
    assert run["error"].startswith("rank 1: died without an error of its own"), run
    assert "Error: rank 1: died without an error of its own" in result.stderr


def test_root_cause_prefers_an_oom_then_a_silent_rank_over_lost_peers():
    from lorakit.training.distributed import SILENT_RANK, root_cause

    lost = "RuntimeError: [pair.cc:537] Read error [127.0.0.1]:43212: Connection reset by peer"
    oom = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert root_cause({0: lost, 2: oom, 3: "ValueError: x"}, 4) == (2, oom)
    assert root_cause({0: lost, 2: lost}, 4) == (1, SILENT_RANK)  # ranks 1 and 3 said nothing
    assert root_cause({1: "ValueError: x", 0: lost}, 4) == (1, "ValueError: x")  # rank 0 only lost rank 1
    assert root_cause({1: lost, 0: lost}, 2) == (0, lost)
    assert root_cause({}, 2) == (None, SILENT_RANK)
    assert root_cause({}, None) is None


def test_cancel_of_a_stale_row_never_signals_a_stranger_that_got_its_pid(tmp_path, cli):
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        queue = JobQueue(tmp_path)
        job = queue.submit(exp_id="stale", config_path=str(tmp_path / "x.toml"))
        queue.update(job.id, state="running", pid=stranger.pid)  # its scheduler died; the pid was reused
        result = cli("cancel", str(job.id), "--outputs", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert "cancelled (no scheduler was running)" in result.stdout
        assert queue.get(job.id).state == "cancelled"
        time.sleep(0.2)
        assert stranger.poll() is None  # not a lorakit process: left alone
    finally:
        stranger.kill()
        stranger.wait()
