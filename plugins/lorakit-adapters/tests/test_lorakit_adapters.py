"""lorakit-adapters, installed: bottleneck adapters (both placements) and LoRA + bottleneck on a tiny BERT
and a tiny ERNIE, through the real ``lorakit`` command: train, save, reload (identical logits), resume
exactly, predict, compare, estimate, and the combinations refused before any folder exists.

Runs where the package is installed (``nox -s plugins``); fixtures come from ``lorakit.testing``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lorakit_adapters
import pytest
import torch

from lorakit import Experiment

VERSION = importlib.metadata.version("lorakit-adapters")
RISK = ["低风险", "中风险", "高风险"]


def lorakit(*args: str) -> subprocess.CompletedProcess:
    """The real ``lorakit`` command, loading plugins from entry points like a user's shell would."""
    return subprocess.run(
        [sys.executable, "-m", "lorakit", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LORAKIT_NO_PROGRESS": "1"},
    )


@pytest.fixture
def project(tmp_path: Path, tiny_bert: Path):
    """A tmp project with 160 synthetic rows; ``write(name, model_lines, **train)`` writes a config."""
    from lorakit.testing import synthetic_frame

    synthetic_frame(160, seed=3).to_csv(tmp_path / "train.csv", index=False)

    def write(name: str, model: str, arch: Path = tiny_bert, **train: object) -> Path:
        settings = {"batch_size": 16, "lr": 5e-3, "epochs": 2, **train}
        path = tmp_path / f"{name}.toml"
        path.write_text(
            f'exp_id = "{name}"\n[data]\nraw_data_path = "train.csv"\n'
            f'cache_dir = "{(tmp_path / "cache").as_posix()}"\nmax_len = 32\nval_ratio = 0.25\n'
            f'label_column = "risk_level"\nlabel_subset = {json.dumps(RISK, ensure_ascii=False)}\n'
            f'[model]\narch = "{arch.as_posix()}"\n{model}\n[train]\n'
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()),
            encoding="utf-8",
        )
        return path

    write.outputs = tmp_path / "outputs"  # type: ignore[attr-defined]
    return write


MIX = """method = ["lora", "bottleneck"]
[model.lora]
rank = 4
alpha = 8
[model.bottleneck]
placement = "houlsby"
reduction_factor = 4
"""
PFEIFFER = 'method = "bottleneck"\n[model.bottleneck]\nreduction_factor = 4\n'
HOULSBY = 'method = "bottleneck"\n[model.bottleneck]\nplacement = "houlsby"\nreduction_factor = 4\n'


def test_plugins_json_lists_the_package_with_its_version():
    proc = lorakit("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout) if r["name"] == "adapters"]
    assert row["distribution"] == "lorakit-adapters" and row["version"] == VERSION
    assert row["registered"] == {"tuning_methods": ["bottleneck"]}


@pytest.mark.parametrize(
    ("placement", "per_layer"),
    [("pfeiffer", ["output.dense"]), ("houlsby", ["attention.output.dense", "output.dense"])],
)
def test_placements_put_identity_adapters_after_the_right_projections(tiny_bert: Path, placement, per_layer):
    import transformers

    base = transformers.AutoModel.from_pretrained(tiny_bert).eval()
    model = transformers.AutoModel.from_pretrained(tiny_bert).eval()
    options = {"placement": placement, "reduction_factor": 4, "non_linearity": "relu"}
    model.requires_grad_(False)
    lorakit_adapters.apply(model, None, options)
    expected = [f"encoder.layer.{i}.{p}" for i in range(2) for p in per_layer]
    assert sorted(lorakit_adapters.state_dict(model)) == sorted(
        f"{name}.bottleneck.{w}"
        for name in expected
        for w in ("down.weight", "down.bias", "up.weight", "up.bias")
    )
    # only the adapters train, and the formula the estimate uses counts exactly them
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = [(n, 32, 32) for n in expected]
    assert (
        trainable
        == lorakit_adapters.trainable_parameters(layers, options)
        == len(expected) * (2 * 32 * 8 + 8 + 32)
    )
    # `up` starts at zero: the adapted model computes what the base model computes
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    assert torch.equal(model(ids).last_hidden_state, base(ids).last_hidden_state)


def test_load_state_dict_refuses_weights_that_do_not_fit(tiny_bert: Path):
    import transformers

    model = transformers.AutoModel.from_pretrained(tiny_bert)
    lorakit_adapters.apply(
        model, None, {"placement": "pfeiffer", "reduction_factor": 4, "non_linearity": "relu"}
    )
    state = {k: v.clone() for k, v in lorakit_adapters.state_dict(model).items()}
    with pytest.raises(KeyError, match="missing"):
        lorakit_adapters.load_state_dict(model, dict(list(state.items())[1:]))
    key = next(iter(state))
    with pytest.raises(RuntimeError, match="has shape"):
        lorakit_adapters.load_state_dict(model, {**state, key: torch.zeros(1)})


@pytest.mark.parametrize("model", [PFEIFFER, HOULSBY, MIX], ids=["pfeiffer", "houlsby", "lora+bottleneck"])
def test_train_save_reload_and_predict(project, model: str):
    name = "run"
    config = project(name, model)
    proc = lorakit("train", str(config), "--outputs", str(project.outputs))
    assert proc.returncode == 0, proc.stderr
    folder = project.outputs / name
    adapter = folder / "lora_adapter"
    assert (adapter / "bottleneck.safetensors").is_file()
    # the peft part is a plain peft adapter beside it; a bottleneck-only model has none
    assert (adapter / "adapter_config.json").is_file() == (model == MIX)
    # the reload check loaded the saved weights beside the trained ones: identical logits
    log = (folder / "train.log").read_text(encoding="utf-8")
    assert "logits match (largest difference 0, fp32)" in log
    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    methods = [t["method"] for t in run["tuning"]]
    assert methods == (["lora", "bottleneck"] if model == MIX else ["bottleneck"])
    assert run["key_params"]["method"] == "+".join(methods)
    assert all(t["trainable_params"] > 0 for t in run["tuning"])

    texts = ["该客户多次逾期未还。", "还款按时，资料齐全。"]
    first = Experiment.load(name, outputs=project.outputs).predict(texts)
    again = Experiment.load(name, outputs=project.outputs).predict(texts)
    assert first == again
    assert [set(row["risk_level"]["probabilities"]) for row in first] == [set(RISK)] * 2


def test_mixed_run_in_bf16_completes(project):
    config = project("mix_bf16", MIX, mixed_precision="bf16", epochs=1)
    proc = lorakit("train", str(config), "--outputs", str(project.outputs))
    assert proc.returncode == 0, proc.stderr
    run = json.loads((project.outputs / "mix_bf16" / "run.json").read_text(encoding="utf-8"))
    assert (run["status"], run["precision"]) == ("completed", "bf16")


def test_ernie_takes_bottleneck_adapters(project, tiny_bert: Path, tmp_path: Path):
    import transformers

    ernie = tmp_path / "tiny-ernie"
    config = transformers.ErnieConfig(
        vocab_size=transformers.AutoConfig.from_pretrained(tiny_bert).vocab_size,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.ErnieModel(config).save_pretrained(ernie)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tiny_bert / name).exists():
            shutil.copy(tiny_bert / name, ernie / name)
    proc = lorakit(
        "train", str(project("ernie_mix", MIX, arch=ernie, epochs=1)), "--outputs", str(project.outputs)
    )
    assert proc.returncode == 0, proc.stderr
    run = json.loads((project.outputs / "ernie_mix" / "run.json").read_text(encoding="utf-8"))
    assert run["key_params"]["backbone"] == "ernie" and run["status"] == "completed"


def _wait_for_checkpoint(folder: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for state in folder.glob("checkpoints/step-*/trainer_state.json"):
            try:
                loop = json.loads(state.read_text(encoding="utf-8"))["loop"]
            except (OSError, ValueError, KeyError):
                continue
            if loop["epoch"] == 2 and loop["batch"] > 0:
                return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before a mid-epoch checkpoint: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("no mid-epoch checkpoint appeared")


def test_mixed_run_resumes_exactly_after_sigkill(project):
    settings = {"batch_size": 4, "epochs": 3, "checkpoint_every_steps": 3, "lr": 2e-3}
    solo = lorakit("train", str(project("solo", MIX, **settings)), "--outputs", str(project.outputs))
    assert solo.returncode == 0, solo.stderr
    config = project("killed", MIX, **settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorakit", "train", str(config), "--outputs", str(project.outputs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LORAKIT_NO_PROGRESS": "1"},
    )
    _wait_for_checkpoint(project.outputs / "killed", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = lorakit("train", str(config), "--outputs", str(project.outputs), "--resume")
    assert resumed.returncode == 0, resumed.stderr

    def metrics(name: str) -> dict:
        doc = json.loads((project.outputs / name / "metrics.json").read_text(encoding="utf-8"))
        return {
            k: {m: v for m, v in doc[k].items() if m != "epoch_seconds"}
            for k in ("epoch_1", "epoch_2", "epoch_3", "best")
        }

    assert metrics("killed") == metrics("solo")


def test_compare_filter_and_estimate_show_each_part(project):
    for name, model in (
        ("lora_only", 'method = "lora"\n[model.lora]\nrank = 4\nalpha = 8\n'),
        ("mixed", MIX),
    ):
        config = project(name, model, epochs=1)
        proc = lorakit("train", str(config), "--outputs", str(project.outputs))
        assert proc.returncode == 0, proc.stderr
    listed = lorakit("ls", "--outputs", str(project.outputs), "--filter", "method=lora+bottleneck", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["exp_id"] for row in json.loads(listed.stdout)] == ["mixed"]
    compared = lorakit("compare", "lora_only", "mixed", "--outputs", str(project.outputs))
    assert compared.returncode == 0, compared.stderr
    assert "lora+bottleneck" in compared.stdout and "bottleneck_params" in compared.stdout
    shown = lorakit("show", "mixed", "--outputs", str(project.outputs))
    run = json.loads((project.outputs / "mixed" / "run.json").read_text(encoding="utf-8"))
    counts = {t["method"]: t["trainable_params"] for t in run["tuning"]}
    assert (
        f"bottleneck (placement houlsby, reduction_factor 4, non_linearity relu) {counts['bottleneck']:,} params"
        in shown.stdout
    )
    estimate = lorakit("estimate", str(project("mixed", MIX)), "--json")
    assert estimate.returncode == 0, estimate.stderr
    details = json.loads(estimate.stdout)["details"]["trainable"]
    assert f"lora {counts['lora']:,} + bottleneck {counts['bottleneck']:,}" in details


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            'method = ["lora", "ia3"]',
            "model.method: lora and ia3 are both peft methods; a combination holds at most one",
        ),
        (
            'method = ["lora", "bottleneck"]\n[model.lora]\ntarget_modules = ["output.dense"]',
            "model.bottleneck: bottleneck cannot adapt this model: encoder.layer.0.output.dense is already adapted (peft's Linear",
        ),
        ('method = "bottleneck"\n[model.bottleneck]\nplacement = "middle"', "model.bottleneck.placement: "),
        (
            'method = ["lora", "lora"]',
            "model.method: expected each method once; ['lora', 'lora'] names lora twice",
        ),
    ],
    ids=["two-peft-methods", "same-layer", "bad-placement", "twice"],
)
def test_combinations_that_cannot_work_are_refused_before_the_folder(project, model: str, expected: str):
    proc = lorakit("train", str(project("bad", model)), "--outputs", str(project.outputs))
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert not (project.outputs / "bad").exists()
