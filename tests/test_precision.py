"""Mixed precision end to end on CPU (bf16 and fp16 autocast), and the work after training: a run that
trains also finishes, or is recorded as failed with its reason, and a signal during loading preempts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import _wait_for_checkpoint, outputs, project  # noqa: F401  (fixture)

from lorakit import Experiment
from lorakit.training import precision as mp

FAULTS = Path(__file__).parent / "plugins_faults"
TRAIN = (sys.executable, "-m", "lorakit", "train")


def faults_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "LORAKIT_NO_PROGRESS": "1", **extra}


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def strip(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "epoch_seconds"}


def test_resolve_never_picks_fp16_by_surprise():
    assert mp.resolve("no", "cpu") == "fp32"
    assert mp.resolve("bf16", "cpu") == "bf16"
    assert mp.resolve("fp16", "cpu") == "fp16"
    assert mp.resolve("auto", "cpu") == ("bf16" if mp.cpu_has_native_bf16() else "fp32")


def test_bf16_run_completes_with_its_reload_check_and_records_its_precision(project, cli):  # noqa: F811
    out = outputs(project)
    config = project("bf16", tasks=2)
    result = Experiment(config, ['train.mixed_precision="bf16"'], outputs=out).run(echo=False)
    assert result.status == "completed"
    run = read(result.output_dir, "run.json")
    assert run["status"] == "completed" and run["error"] is None
    assert run["precision"] == "bf16"
    log = (result.output_dir / "train.log").read_text(encoding="utf-8")
    assert "logits match" in log and "bf16" in log

    fp32 = Experiment(project("fp32", tasks=2), ['train.mixed_precision="no"'], outputs=out).run(echo=False)
    assert read(fp32.output_dir, "run.json")["precision"] == "fp32"

    listed = cli("ls", "--outputs", str(out), "--json")
    assert listed.returncode == 0, listed.stderr
    assert {row["exp_id"]: row["precision"] for row in json.loads(listed.stdout)} == {
        "bf16": "bf16",
        "fp32": "fp32",
    }
    table = cli("ls", "--outputs", str(out))
    assert "precision" in table.stdout.splitlines()[0]
    compared = cli("compare", "bf16", "fp32", "--outputs", str(out), "--format", "json")
    assert [row["precision"] for row in json.loads(compared.stdout)] == ["bf16", "fp32"]
    assert (
        cli("ls", "--outputs", str(out), "--filter", "precision=bf16", "--json").stdout.count('"exp_id"') == 1
    )


def test_auto_precision_is_what_the_hardware_runs_natively(project):  # noqa: F811
    result = Experiment(project("auto", tasks=1, epochs=1), outputs=outputs(project)).run(echo=False)
    assert read(result.output_dir, "run.json")["precision"] == mp.resolve("auto", "cpu")


def test_wrong_adapter_fails_the_reload_check_and_is_recorded(project, cli):  # noqa: F811
    out = outputs(project)
    config = project("wrong", tasks=2, epochs=1)
    adapter = out / "wrong" / "lora_adapter" / "adapter_model.safetensors"
    bad = subprocess.run(
        [
            *TRAIN,
            str(config),
            "--outputs",
            str(out),
            "--set",
            'train.mixed_precision="bf16"',
        ],
        capture_output=True,
        text=True,
        env=faults_env(LORAKIT_FAULT_CORRUPT_ADAPTER=str(adapter)),
    )
    assert bad.returncode == 1, bad.stderr
    assert "Traceback" not in bad.stderr
    assert "Error: wrong failed: ReloadMismatch:" in bad.stderr
    assert "does not reproduce the trained model" in bad.stderr
    run = read(out / "wrong", "run.json")
    assert run["status"] == "failed" and "does not reproduce the trained model" in run["error"]
    assert "Traceback" in (out / "wrong" / "train.log").read_text(encoding="utf-8")
    assert (out / "wrong" / "checkpoints").is_dir()  # the finished training is kept
    listed = json.loads(cli("ls", "--outputs", str(out), "--json").stdout)
    assert [row["status"] for row in listed] == ["failed"]

    # without the fault, --resume redoes only the work after training: it saves and checks again
    fixed = cli(
        "train", str(config), "--outputs", str(out), "--resume", "--set", 'train.mixed_precision="bf16"'
    )
    assert fixed.returncode == 0, fixed.stderr
    assert read(out / "wrong", "run.json")["status"] == "completed"
    assert not (out / "wrong" / "checkpoints").exists()
    assert "resumed from" in (out / "wrong" / "train.log").read_text(encoding="utf-8")


def test_a_raising_run_end_hook_is_a_warning_not_a_failed_run(project, cli):  # noqa: F811
    """Event hooks observe a run (trackers, notifiers): one that raises never fails the run (issue 12)."""
    out = outputs(project)
    config = project("runend", tasks=1, epochs=1)
    result = subprocess.run(
        [*TRAIN, str(config), "--outputs", str(out)],
        capture_output=True,
        text=True,
        env=faults_env(LORAKIT_FAULT_RUN_END="1"),
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning: plugin")]
    assert warnings == [
        'Warning: plugin "faults": lorakit_on_run_end raised RuntimeError: '
        "fault injected: on_run_end refused runend; ignored"
    ]
    assert read(out / "runend", "run.json")["status"] == "completed"
    assert read(out, "experiment_index.json")["experiments"]["runend"]["status"] == "completed"


def test_sigusr1_during_model_loading_preempts_and_resume_completes(project, cli):  # noqa: F811
    out = outputs(project)
    config = project("loading", tasks=1, epochs=1)
    marker = project.root / "loading.marker"
    proc = subprocess.Popen(
        [
            *TRAIN,
            str(config),
            "--outputs",
            str(out),
            "--set",
            'model.backbone="slow_bert"',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=faults_env(LORAKIT_FAULT_LOADING=str(marker), LORAKIT_FAULT_LOAD_SECONDS="2"),
    )
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr
    assert "stopped by SIGUSR1 at step 0" in stderr
    run = read(out / "loading", "run.json")
    assert run["status"] == "preempted" and run["error"] == "SIGUSR1"
    assert not list((out / "loading").glob("checkpoints/step-*"))
    # `auto` is decided once, at the first start: as if that start had been on other hardware, the
    # resume here keeps the recorded precision (a GPU run preempted in bf16 resumes in bf16 on a CPU)
    other = "fp32" if run["precision"] == "bf16" else "bf16"
    (out / "loading" / "run.json").write_text(json.dumps({**run, "precision": other}), encoding="utf-8")

    resumed = subprocess.run(
        [
            *TRAIN,
            str(config),
            "--outputs",
            str(out),
            "--resume",
            "--set",
            'model.backbone="slow_bert"',
        ],
        capture_output=True,
        text=True,
        env=faults_env(),
    )
    assert resumed.returncode == 0, resumed.stderr
    done = read(out / "loading", "run.json")
    assert done["status"] == "completed" and done["precision"] == other
    assert "no checkpoint found: starting from the beginning" in (out / "loading" / "train.log").read_text(
        encoding="utf-8"
    )


SHORT_RESUME = {"batch_size": 8, "epochs": 2, "checkpoint_every_steps": 3, "lr": 2e-3}


# bf16's exact resume is checked with two processes in test_distributed.py (and by bench/gpu_check.sh)
@pytest.mark.parametrize("precision", ["fp16"])
def test_sigkill_and_resume_is_exact_in_mixed_precision(project, cli, precision):  # noqa: F811
    out = outputs(project)
    sets = [f'train.mixed_precision="{precision}"']
    if precision == "fp16":
        # gradients that overflow fp16 at the initial loss scale: the scaler skips steps and lowers the scale
        sets += ['train.loss="amplified"', "train.loss_options={factor = 4000.0}"]
    env = faults_env()
    solo = subprocess.run(
        [*TRAIN, str(project(f"solo_{precision}", tasks=2, **SHORT_RESUME))]
        + ["--outputs", str(out)]
        + [arg for s in sets for arg in ("--set", s)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert solo.returncode == 0, solo.stderr
    solo_run = read(out / f"solo_{precision}", "run.json")
    assert solo_run["precision"] == precision

    config = project(f"killed_{precision}", tasks=2, **SHORT_RESUME)
    proc = subprocess.Popen(
        [*TRAIN, str(config), "--outputs", str(out)] + [arg for s in sets for arg in ("--set", s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    folder = out / f"killed_{precision}"
    _wait_for_checkpoint(folder, proc, epoch=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    newest = sorted(folder.glob("checkpoints/step-*"))[-1]
    state = read(newest, "trainer_state.json")
    assert state["precision"] == precision
    if precision == "fp16":
        import torch

        assert (newest / "scaler.pt").is_file()
        scaler = torch.load(newest / "scaler.pt", weights_only=True)
        assert scaler["scale"] < 65536.0  # the scaler backed off: steps were skipped
        skipped = state["loop"]["skipped_steps"]
        assert skipped > 0
        # the LR schedule advanced only on the steps that were taken
        schedule = torch.load(newest / "scheduler.pt", weights_only=True)
        assert schedule["last_epoch"] == state["loop"]["global_step"] - skipped
    else:
        assert not (newest / "scaler.pt").exists()

    resumed = subprocess.run(
        [*TRAIN, str(config), "--outputs", str(out), "--resume"]
        + [arg for s in sets for arg in ("--set", s)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    metrics = read(folder, "metrics.json")
    solo_metrics = read(out / f"solo_{precision}", "metrics.json")
    for key in ("epoch_1", "epoch_2", "best"):
        assert strip(metrics[key]) == strip(solo_metrics[key]), key
    run = read(folder, "run.json")
    assert run["precision"] == precision and run["skipped_steps"] == solo_run["skipped_steps"]
