"""Training end to end on a tiny random BERT: 1, 2 and 3 tasks, artifacts, reload, resume, predict."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from lorakit import Experiment
from lorakit.errors import ResumeError
from lorakit.testing import synthetic_frame

TASKS = {
    1: {"label": ["低风险", "中风险", "高风险"]},
    2: {"risk_level": ["低风险", "中风险", "高风险"], "is_adopt": ["采纳", "不采纳"]},
    3: {
        "risk_level": ["低风险", "中风险", "高风险"],
        "is_adopt": ["采纳", "不采纳"],
        "channel": ["线上", "线下"],
    },
}


@pytest.fixture
def project(tmp_path: Path, tiny_bert: Path):
    """A tmp project: data CSV, global label map, and a config writer."""
    frame = synthetic_frame(160, seed=1, tasks=3)
    frame.to_csv(tmp_path / "train.csv", index=False)
    labels = ["低风险", "中风险", "高风险", "采纳", "不采纳", "线上", "线下"]
    (tmp_path / "labels.json").write_text(
        json.dumps({label: i for i, label in enumerate(labels)}, ensure_ascii=False), encoding="utf-8"
    )

    def write(name: str, tasks: int = 2, **train) -> Path:
        subset = TASKS[tasks]
        label_subset = subset["label"] if tasks == 1 else subset
        train = {"batch_size": 16, "lr": 5e-3, "epochs": 2, **train}
        lines = [
            f'exp_id = "{name}"',
            "[data]",
            'raw_data_path = "train.csv"',
            'global_label_map = "labels.json"',
            f'cache_dir = "{(tmp_path / "cache").as_posix()}"',
            "max_len = 32",
            "val_ratio = 0.25",
            f"label_subset = {json.dumps(label_subset, ensure_ascii=False)}"
            if tasks == 1
            else "[data.label_subset]\n"
            + "\n".join(f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in subset.items()),
            "[model]",
            f'arch = "{tiny_bert.as_posix()}"',
            "[model.lora]",
            "rank = 4",
            "alpha = 8",
            "[train]",
            *(f"{k} = {json.dumps(v)}" for k, v in train.items()),
        ]
        path = tmp_path / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    write.root = tmp_path  # type: ignore[attr-defined]
    return write


def outputs(project) -> Path:
    return project.root / "outputs"


@pytest.mark.parametrize("tasks", [1, 2, 3])
def test_train_n_tasks_end_to_end(project, tasks: int):
    config = project(f"exp_{tasks}", tasks=tasks)
    result = Experiment(config, outputs=outputs(project)).run(echo=False)
    folder = result.output_dir
    for name in (
        "config_copy.toml",
        "label_map.json",
        "metrics.json",
        "env_info.json",
        "run.json",
        "train.log",
    ):
        assert (folder / name).is_file(), name
    assert (folder / "lora_adapter" / "adapter_config.json").is_file()
    assert (folder / "lora_adapter" / "heads.safetensors").is_file()
    assert not (folder / "checkpoints").exists()
    assert not stat.S_IMODE((folder / "config_copy.toml").stat().st_mode) & 0o222  # read-only
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics) == {"epoch_1", "epoch_2", "best"}
    names = list(TASKS[tasks])
    for task in names:
        assert 0 <= metrics["best"][f"{task}_f1"] <= 1
        assert f"{task}_accuracy" in metrics["epoch_1"]
    assert metrics["best"]["avg_f1"] == pytest.approx(
        sum(metrics["best"][f"{t}_f1"] for t in names) / len(names)
    )
    label_map = (folder / "label_map.json").read_text(encoding="utf-8")
    assert "低风险" in label_map and "\\u" not in label_map
    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "completed"
    assert run["task_type"] == ["single_cls", "double_cls", "multi_cls"][tasks - 1]
    env = json.loads((folder / "env_info.json").read_text(encoding="utf-8"))
    assert env["packages"]["torch"] and env["packages"]["peft"] and env["peak_memory_mb"] > 0
    assert "backbones" in env["plugins"]


def test_learns_the_synthetic_task(project):
    # a random tiny encoder is close to a bag of embeddings: mean pooling lets the head read the keywords
    config = project("learn", tasks=2, epochs=8, batch_size=8, lr=5e-2)
    result = Experiment(config, ["model.pooling=mean"], outputs=outputs(project)).run(echo=False)
    assert result.best["avg_f1"] > 0.5  # always predicting the majority class gives ~0.3


def test_adapter_reloads_with_plain_peft(project):
    import peft
    import torch
    import transformers
    from safetensors.torch import load_file

    result = Experiment(project("reload", tasks=2), outputs=outputs(project)).run(echo=False)
    adapter = result.output_dir / "lora_adapter"
    heads_meta = json.loads((adapter / "heads.json").read_text(encoding="utf-8"))
    base = transformers.AutoModel.from_pretrained(heads_meta["arch"], add_pooling_layer=False)
    model = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    heads = load_file(str(adapter / "heads.safetensors"))
    tok = transformers.AutoTokenizer.from_pretrained(heads_meta["arch"])
    enc = tok(["该客户多次逾期未还，建议驳回。"], return_tensors="pt")
    with torch.no_grad():
        cls = model(**enc).last_hidden_state[:, 0]
        plain = cls @ heads["t0.1.weight"].T + heads["t0.1.bias"]
    predictor = Experiment.load(result.output_dir)
    with torch.no_grad():
        ours = predictor.model.classifier(enc["input_ids"], enc["attention_mask"])[0]
    assert torch.allclose(plain, ours, atol=1e-5)


def test_predict_api_and_cli(project, cli):
    result = Experiment(project("pred", tasks=2), outputs=outputs(project)).run(echo=False)
    predictor = Experiment.load("pred", outputs=outputs(project))
    (row,) = predictor.predict(["该客户信用记录良好，建议通过。"])
    assert set(row) == {"risk_level", "is_adopt"}
    assert row["risk_level"]["label"] in TASKS[2]["risk_level"]
    assert sum(row["risk_level"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    out = cli(
        "predict", "pred", "--text", "该客户信用记录良好，建议通过。", "--outputs", str(outputs(project))
    )
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[0])
    assert line["risk_level"]["label"] == row["risk_level"]["label"]

    src = project.root / "in.csv"
    synthetic_frame(5, seed=9).to_csv(src, index=False)
    dst = project.root / "out.csv"
    out = cli("predict", str(result.output_dir), "--input", str(src), "--output", str(dst))
    assert out.returncode == 0, out.stderr
    import pandas as pd

    written = pd.read_csv(dst)
    assert {"risk_level_pred", "risk_level_prob", "is_adopt_pred", "is_adopt_prob"} <= set(written.columns)
    assert len(written) == 5


def test_finished_experiment_is_not_overwritten(project):
    config = project("once", tasks=1, epochs=1)
    Experiment(config, outputs=outputs(project)).run(echo=False)
    with pytest.raises(ResumeError, match="completed experiment; use --force"):
        Experiment(config, outputs=outputs(project)).run(echo=False)
    again = Experiment(config, outputs=outputs(project)).run(force=True, echo=False)
    assert again.status == "completed"


def _wait_for_checkpoint(folder: Path, proc, *, epoch: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for state in sorted(folder.glob("checkpoints/step-*/trainer_state.json")):
            try:
                loop = json.loads(state.read_text(encoding="utf-8"))["loop"]
            except (OSError, ValueError, KeyError):
                continue
            if loop["epoch"] == epoch and loop["batch"] > 0:
                return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before a mid-epoch checkpoint: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("no mid-epoch checkpoint appeared")


def _popen_train(config: Path, out: Path, *extra: str):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "lorakit", "train", str(config), "--outputs", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LORAKIT_NO_PROGRESS": "1"},
    )


RESUME_TRAIN = {"batch_size": 4, "epochs": 3, "checkpoint_every_steps": 3, "lr": 2e-3}


def test_resume_after_sigkill_gives_identical_metrics(project, cli):
    out = outputs(project)
    solo = Experiment(project("solo", tasks=2, **RESUME_TRAIN), outputs=out).run(echo=False)

    config = project("killed", tasks=2, **RESUME_TRAIN)
    proc = _popen_train(config, out)
    _wait_for_checkpoint(out / "killed", proc, epoch=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = json.loads((out / "killed" / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "running"  # killed: nobody had the chance to say otherwise

    resumed = cli("train", str(config), "--outputs", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / "killed" / "metrics.json").read_text(encoding="utf-8"))
    strip = lambda m: {k: v for k, v in m.items() if k != "epoch_seconds"}  # noqa: E731
    for key in ("epoch_1", "epoch_2", "epoch_3", "best"):
        assert strip(metrics[key]) == strip(solo.metrics[key]), key


def test_sigusr1_checkpoints_and_exits_preempted_then_resume_refuses_changed_config(project, cli):
    out = outputs(project)
    config = project("preempt", tasks=2, **RESUME_TRAIN)
    proc = _popen_train(config, out)
    _wait_for_checkpoint(out / "preempt", proc, epoch=1)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == 75, proc.stderr.read()
    run = json.loads((out / "preempt" / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "preempted"

    changed = cli("train", str(config), "--outputs", str(out), "--resume", "--set", "train.lr=0.1")
    assert changed.returncode == 2
    assert "config changed since this run started; resume refused" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1

    fresh = cli("train", str(config), "--outputs", str(out))
    assert fresh.returncode == 2 and "--resume" in fresh.stderr

    resumed = cli("train", str(config), "--outputs", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "preempt" / "run.json").read_text(encoding="utf-8"))["status"] == "completed"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.head=nope", "Error: model.head: unknown task head 'nope'"),
        ('train.metrics=["accuracy", "kappa"]', "Error: train.metrics: unknown metric 'kappa'"),
        (
            "train.lr_scheduler=cosin",
            "Error: train.lr_scheduler: unknown LR scheduler 'cosin' (did you mean cosine?)",
        ),
        ("train.loss=poly1", "Error: train.loss: unknown loss 'poly1'"),
    ],
)
def test_bad_plugin_names_leave_no_folder(project, cli, override, message):
    config = project("bad", tasks=2)
    result = cli("train", str(config), "--outputs", str(outputs(project)), "--set", override)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (outputs(project) / "bad").exists()


def test_test_split_is_scored_with_the_best_epoch(project):
    config = project("with_test", tasks=2, epochs=2)
    result = Experiment(config, ["data.test_ratio=0.2"], outputs=outputs(project)).run(echo=False)
    assert set(result.metrics["test"]) >= {"risk_level_f1", "is_adopt_f1", "avg_f1"}
    assert result.metrics["best"]["epoch"] in (1, 2)


def test_uncertainty_weights_and_dict_weights_train(project):
    for name, weight in (("unc", '"uncertainty"'), ("dict", "{risk_level = 2.0, is_adopt = 1.0}")):
        config = project(f"w_{name}", tasks=2, epochs=1)
        result = Experiment(config, [f"train.loss_weight={weight}"], outputs=outputs(project)).run(echo=False)
        assert result.status == "completed"


def test_early_stopping(project):
    # a learning rate this small changes nothing: no epoch after the first is better
    config = project("early", tasks=1, epochs=5, lr=1e-12, early_stopping_patience=1)
    result = Experiment(config, outputs=outputs(project)).run(echo=False)
    assert [k for k in result.metrics if k.startswith("epoch_")] == ["epoch_1", "epoch_2"]
    assert result.best["epoch"] == 1


def test_non_finite_loss_stops_with_the_step(project, cli):
    config = project("nan", tasks=1, epochs=2, lr=1e30, max_grad_norm=1e30)
    result = cli("train", str(config), "--outputs", str(outputs(project)), "--set", "train.warmup_ratio=0.0")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert "loss became NaN or infinite at step" in line
    run = json.loads((outputs(project) / "nan" / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "failed" and "step" in run["error"]
