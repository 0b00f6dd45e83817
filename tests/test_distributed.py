"""Data-parallel training through torchrun on CPU (gloo): two ranks step, rank 0 alone writes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from test_train import _popen_train, _wait_for_checkpoint, outputs, project  # noqa: F401  (fixture)

from lorakit import Experiment
from lorakit.testing import synthetic_frame

LEARN = {"epochs": 4, "lr": 5e-2}


def test_two_process_ddp_matches_single_process(project, cli):  # noqa: F811
    out = outputs(project)
    # one process with batch 16 versus two processes with batch 8 each: the same effective batch
    single = Experiment(
        project("single", tasks=2, batch_size=16, **LEARN), ["model.pooling=mean"], outputs=out
    )
    solo = single.run(echo=False)

    config = project("ddp", tasks=2, batch_size=8, **LEARN)
    # a test split too: rank 0 scores it after training, alone (the other rank has finished)
    synthetic_frame(24, seed=9, tasks=3).to_csv(config.parent / "test.csv", index=False)
    test_split = f"data.test_data_path={(config.parent / 'test.csv').as_posix()}"
    result = cli(
        "train", str(config), "--outputs", str(out), "--nproc", "2", "--set", "model.pooling=mean",
        "--set", test_split,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "ddp" / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "completed"
    assert run["world_size"] == 2
    assert len(run["steps_per_rank"]) == 2 and run["steps_per_rank"][0] == run["steps_per_rank"][1] > 0
    # rank 0 alone wrote: one log, one adapter, and the log names one process group of 2
    assert [p.name for p in (out / "ddp").glob("*.log")] == ["train.log"]
    assert "x2" in (out / "ddp" / "train.log").read_text(encoding="utf-8")
    reloaded = Experiment.load("ddp", outputs=out).predict(["该客户多次逾期未还，建议驳回。"])
    assert reloaded[0]["risk_level"]["label"] in ("低风险", "中风险", "高风险")
    metrics = json.loads((out / "ddp" / "metrics.json").read_text(encoding="utf-8"))
    assert abs(metrics["best"]["avg_f1"] - solo.best["avg_f1"]) < 0.2
    reports = json.loads((out / "ddp" / "reports.json").read_text(encoding="utf-8"))
    assert "avg_f1" in metrics["test"]
    assert sum(map(sum, reports["test"]["tasks"]["risk_level"]["confusion"])) == 24


def test_ddp_bf16_uncertainty_weights_preempt_and_exact_resume(project, cli):  # noqa: F811
    """Two ranks in bf16 with learned (uncertainty) loss weights, which live outside the DDP model: the
    ranks must keep identical weights (the run fails if their checksums differ), and a SIGUSR1 + --resume
    must give the metrics of an uninterrupted run."""
    out = outputs(project)
    train = {
        "batch_size": 4,
        "epochs": 2,
        "checkpoint_every_steps": 2,
        "lr": 2e-3,
        "mixed_precision": "bf16",
        "loss_weight": "uncertainty",
        "grad_accum": 2,
    }
    base = project("ddp_solo", tasks=2, **train)
    solo = cli("train", str(base), "--outputs", str(out), "--nproc", "2")
    assert solo.returncode == 0, solo.stderr
    run = json.loads((out / "ddp_solo" / "run.json").read_text(encoding="utf-8"))
    assert run["precision"] == "bf16" and run["world_size"] == 2
    assert len(run["peak_memory_mb_per_rank"]) == 2 and run["peak_memory_mb"] == max(
        run["peak_memory_mb_per_rank"]
    )

    config = project("ddp_stop", tasks=2, **train)
    proc = _popen_train(config, out, "--nproc", "2")
    _wait_for_checkpoint(out / "ddp_stop", proc, epoch=1)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=180) == 75, proc.stderr.read()
    assert json.loads((out / "ddp_stop" / "run.json").read_text(encoding="utf-8"))["status"] == "preempted"
    resumed = cli("train", str(config), "--outputs", str(out), "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr

    def load(name: str) -> dict:
        data = json.loads((out / name / "metrics.json").read_text(encoding="utf-8"))
        return {k: {m: x for m, x in v.items() if m != "epoch_seconds"} for k, v in data.items()}

    assert load("ddp_stop") == load("ddp_solo")


def test_resume_refuses_another_world_size(project, cli, tmp_path: Path):  # noqa: F811
    out = outputs(project)
    config = project("ddp_ws", tasks=2, batch_size=4, epochs=2, checkpoint_every_steps=2, lr=2e-3)
    proc = _popen_train(config, out, "--nproc", "2")
    _wait_for_checkpoint(out / "ddp_ws", proc, epoch=1)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=180) == 75
    single = cli("train", str(config), "--outputs", str(out), "--resume")
    assert single.returncode == 2
    assert "exact resume needs the same number of processes" in single.stderr
