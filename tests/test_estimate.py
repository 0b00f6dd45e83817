"""The memory estimator: the formula against the real model's figures, calibration from recorded runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorakit.config.schema import load_config
from lorakit.scheduling.estimate import (
    CUDA_CONTEXT_MB,
    MIB,
    CalibrationKey,
    calibration_key,
    estimate_memory,
    find_calibration,
    job_precision,
)


@pytest.fixture
def config(tmp_path: Path, tiny_bert: Path):
    def make(**train):
        data = {
            "exp_id": "est",
            "data": {
                "raw_data_path": str(tmp_path / "train.csv"),
                "max_len": 64,
                "label_subset": {"risk_level": ["低", "中", "高"], "is_adopt": ["是", "否"]},
            },
            "model": {"arch": str(tiny_bert), "lora": {"rank": 4}},
            "train": {"batch_size": 16, **train},
        }
        return load_config(data)[0]

    return make


def test_formula_matches_the_real_model(config, builtin_plugins):
    import transformers

    from lorakit.modeling.build import build_classifier, load_backbone_encoder, plan_model

    cfg = config(mixed_precision="no")
    result = estimate_memory(cfg, plugins=builtin_plugins)
    assert result.source == "formula" and result.calibration is None and result.precision == "fp32"
    full = transformers.AutoModel.from_pretrained(cfg.model.arch)  # with the pooler, as counted
    assert result.params == sum(p.numel() for p in full.parameters())
    _, encoder = load_backbone_encoder(cfg, builtin_plugins)
    plan = plan_model(cfg, {"risk_level": 3, "is_adopt": 2}, builtin_plugins, encoder)
    model = build_classifier(plan, encoder, builtin_plugins, seed=0)
    assert result.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    hidden, layers = full.config.hidden_size, full.config.num_hidden_layers
    assert result.parts["activations"] == pytest.approx(16 * 64 * hidden * layers * 34.0 / MIB)
    assert result.parts["frozen_weights"] == pytest.approx(result.params * 4 / MIB)
    assert result.parts["trainable"] == pytest.approx(result.trainable_params * 16 / MIB)
    assert result.parts["cuda_context"] == CUDA_CONTEXT_MB
    assert result.total_mb == math.ceil(sum(result.parts.values()))
    assert "formula" in result.summary()


def test_half_precision_halves_activations(config, builtin_plugins):
    full = estimate_memory(config(mixed_precision="no"), plugins=builtin_plugins)
    for requested in ("bf16", "fp16", "auto"):  # auto: bf16, what the trainer picks on a bf16 GPU
        half = estimate_memory(config(mixed_precision=requested), plugins=builtin_plugins)
        assert half.parts["activations"] == pytest.approx(full.parts["activations"] / 2)
        assert "× 0.5 (" in half.details["activations"] and half.precision == job_precision(requested)
    assert "× 0.5" not in full.details["activations"]


def test_job_precision():
    assert [job_precision(p) for p in ("no", "fp16", "bf16", "auto")] == ["fp32", "fp16", "bf16", "bf16"]


def record_run(
    outputs: Path,
    name: str,
    *,
    arch: str,
    device: str,
    reserved,
    status="completed",
    batch=16,
    tasks=2,
    **fields,
):
    """A run folder as the trainer leaves it: run.json (``fields`` added or, set to None, left out) and
    env_info.json (rank 0's figures)."""
    folder = outputs / name
    folder.mkdir(parents=True)
    key = {
        "model": arch,
        "batch_size": batch,
        "max_len": 64,
        "lora_rank": 4,
        "method": fields.pop("method", "lora"),
    }
    run = {
        "status": status,
        "key_params": key,
        "tasks": {f"task{i}": ["x", "y"] for i in range(tasks)},
        "precision": "bf16",
        "world_size": 1,
        "peak_reserved_mb": reserved,
        **fields,
    }
    run = {k: v for k, v in run.items() if v is not None}
    (folder / "run.json").write_text(json.dumps(run), encoding="utf-8")
    env = {"device": device, "peak_memory_mb": (reserved or 0) * 0.8, "peak_reserved_mb": reserved}
    (folder / "env_info.json").write_text(json.dumps(env), encoding="utf-8")


def test_calibrated_from_recorded_gpu_runs(config, builtin_plugins, tmp_path):
    cfg = config()
    outputs = tmp_path / "outputs"
    arch = cfg.model.arch
    for name, reserved in [("r1", 2000.0), ("r2", 2400.5), ("r3", 2200.0)]:
        record_run(outputs, name, arch=arch, device="GPU-0 (NVIDIA A100-SXM4-40GB)", reserved=reserved)
    record_run(outputs, "cpu_run", arch=arch, device="cpu", reserved=None)  # RSS, not GPU memory
    record_run(outputs, "cpu_rss", arch=arch, device="cpu", reserved=99999.0)
    record_run(outputs, "other_batch", arch=arch, device="GPU-0 (x)", reserved=9000.0, batch=32)
    record_run(outputs, "oom", arch=arch, device="GPU-0 (x)", reserved=39000.0, status="failed")

    key = CalibrationKey(
        model=arch, batch_size=16, max_len=64, rank=4, method="lora", precision="bf16", world_size=1, heads=2
    )
    assert calibration_key(cfg) == key
    calibration = find_calibration(outputs, key)
    assert calibration is not None and calibration.runs == ("r1", "r2", "r3")
    result = estimate_memory(cfg, plugins=builtin_plugins, outputs=outputs)
    assert result.source == "calibrated"
    assert result.total_mb == math.ceil(2400.5 + CUDA_CONTEXT_MB) == 2901
    assert result.formula_mb is not None and result.formula_mb != result.total_mb
    assert "calibrated from 3 runs" in result.summary()
    # a different batch size is a different key: its one run calibrates it
    assert estimate_memory(config(batch_size=32), plugins=builtin_plugins, outputs=outputs).total_mb == 9500


def test_calibration_keys_on_precision_method_gpus_and_heads(config, builtin_plugins, tmp_path):
    outputs = tmp_path / "outputs"
    arch = config().model.arch
    gpu = "GPU-0 (x)"
    record_run(outputs, "bf16", arch=arch, device=gpu, reserved=1000.0)
    record_run(outputs, "fp16", arch=arch, device=gpu, reserved=1100.0, precision="fp16")
    record_run(
        outputs, "old_fp32", arch=arch, device=gpu, reserved=1200.0, precision=None
    )  # before precision
    record_run(
        outputs, "dora", arch=arch, device=gpu, reserved=1300.0, method="dora"
    )  # lora_rank is not dora's
    record_run(outputs, "dora_r4", arch=arch, device=gpu, reserved=1350.0, method="dora", key_params=None)
    record_run(outputs, "one_head", arch=arch, device=gpu, reserved=1400.0, tasks=1)
    record_run(
        outputs,
        "ddp",
        arch=arch,
        device=gpu,
        reserved=1500.0,  # env_info.json: rank 0's figure
        world_size=2,
        peak_reserved_mb=1700.0,
        peak_reserved_mb_per_rank=[1500.0, 1800.0],  # every rank counts
    )
    # dora_r4 records the method's rank explicitly
    dora_r4 = json.loads((outputs / "dora_r4" / "run.json").read_text(encoding="utf-8"))
    dora_r4["key_params"] = {"model": arch, "batch_size": 16, "max_len": 64, "method": "dora", "rank": 4}
    (outputs / "dora_r4" / "run.json").write_text(json.dumps(dora_r4), encoding="utf-8")

    def calibrated(subset, method="lora", gpus=1, **train):
        data = {"raw_data_path": "x.csv", "max_len": 64, "label_subset": subset}
        model = {"arch": arch, "method": method, "lora": {"rank": 4}, "dora": {"rank": 4}}
        train = {"batch_size": 16, **train}
        cfg = load_config(
            {"exp_id": "est", "data": data, "model": model, "train": train, "resources": {"gpus": gpus}}
        )[0]
        found = find_calibration(outputs, calibration_key(cfg))
        return (found.runs, found.max_reserved_mb) if found else None

    two = {"a": ["x", "y"], "b": ["x", "y"]}
    assert calibrated(two) == (("bf16",), 1000.0)  # auto: bf16
    assert calibrated(two, mixed_precision="bf16") == (("bf16",), 1000.0)
    assert calibrated(two, mixed_precision="fp16") == (("fp16",), 1100.0)
    assert calibrated(two, mixed_precision="no") == (("old_fp32",), 1200.0)  # no precision recorded: fp32
    assert calibrated(two, method="dora") == (("dora_r4",), 1350.0)
    assert calibrated(["x", "y"]) == (("one_head",), 1400.0)
    assert calibrated(two, gpus=2) == (("ddp",), 1800.0)  # the peak of its busiest rank
    assert calibrated(two, gpus=4) is None


def test_resources_memory_mb_wins(config, builtin_plugins, tmp_path):
    cfg = load_config(
        {
            "exp_id": "forced",
            "data": {"raw_data_path": "x.csv"},
            "model": {"arch": "no-such-model-needed"},
            "resources": {"memory_mb": 6000},
        }
    )[0]
    result = estimate_memory(cfg, plugins=builtin_plugins)
    assert (result.total_mb, result.source) == (6000, "config")
    assert "resources.memory_mb" in result.summary()


def test_estimate_command_says_where_the_figure_comes_from(config, builtin_plugins, tmp_path, tiny_bert):
    from lorakit.commands.sched import estimate

    outputs = tmp_path / "outputs"
    path = tmp_path / "exp.toml"
    path.write_text(
        "\n".join(
            [
                'exp_id = "est"',
                "[data]",
                'raw_data_path = "train.csv"',
                "max_len = 64",
                'label_subset = ["a", "b"]',
                "[model]",
                f'arch = "{tiny_bert.as_posix()}"',
                "[model.lora]",
                "rank = 4",
                "[train]",
                "batch_size = 16",
            ]
        ),
        encoding="utf-8",
    )
    plain = CliRunner().invoke(estimate, [str(path), "--outputs", str(outputs)])
    assert plain.exit_code == 0, plain.output
    assert "frozen weights" in plain.output and "activations" in plain.output and "formula" in plain.output
    assert "× 0.5 (bf16 autocast)" in plain.output  # mixed_precision auto: bf16 on a GPU
    for name in ("r1", "r2", "r3"):
        record_run(outputs, name, arch=str(tiny_bert), device="GPU-0 (x)", reserved=1000.0, tasks=1)
    result = CliRunner().invoke(estimate, [str(path), "--outputs", str(outputs), "--json"])
    data = json.loads(result.output)
    assert data["source"] == "calibrated" and data["total_mb"] == 1500
    assert "calibrated from 3 runs" in data["summary"]
    assert data["scheduler_uses_mb"] == 1500 and data["margin_mb"] == 256
