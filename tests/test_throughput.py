"""Throughput accounting (issue 14): tokens, tokens/s and model-FLOPs utilisation in run.json and show."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from battery_harness import lorakit, tiny_experiment

from lorakit.training import throughput

MINILM = types.SimpleNamespace(num_hidden_layers=6, hidden_size=384, intermediate_size=1536)


def test_flops_per_token_from_the_shapes():
    # all-MiniLM-L6-v2: 6 x 2 x (4 h^2 + 2 h i) = 21.2 MFLOP of projections, plus attention over the length
    assert throughput.forward_flops_per_token(MINILM, 0) == pytest.approx(21.23e6, rel=1e-3)
    assert throughput.forward_flops_per_token(MINILM, 40) == pytest.approx(
        21.23e6 + 6 * 4 * 40 * 384, rel=1e-3
    )
    # training: forward + input gradients, and weight gradients for the trainable weights only
    train = throughput.train_flops_per_token(MINILM, 40, trainable_params=100_000)
    assert train == pytest.approx(2 * throughput.forward_flops_per_token(MINILM, 40) + 200_000)


def test_the_matmul_peak_is_measured_once_and_cached(tmp_path: Path, monkeypatch):
    import torch

    cache = tmp_path / "peak.json"
    monkeypatch.setenv(throughput.PEAK_CACHE_ENV, str(cache))
    first = throughput.matmul_peak(torch.device("cpu"), "fp32")
    assert first > 1e8  # any CPU this runs on does more than 0.1 GFLOP/s
    ((key, value),) = json.loads(cache.read_text(encoding="utf-8")).items()
    assert value == first and "|fp32|" in key and "threads" in key
    cache.write_text(json.dumps({key: 123.0}), encoding="utf-8")
    assert throughput.matmul_peak(torch.device("cpu"), "fp32") == 123.0  # read back, not measured again


def test_a_run_records_its_throughput_and_show_prints_it(tmp_path: Path, tiny_bert: Path, monkeypatch):
    monkeypatch.setenv(throughput.PEAK_CACHE_ENV, str(tmp_path / "peak.json"))
    sets = tiny_experiment(tmp_path, tiny_bert)
    out = tmp_path / "outputs"
    assert lorakit("train", str(tmp_path / "exp.toml"), *sets, "--outputs", str(out), cwd=tmp_path).code == 0
    run = json.loads((out / "exp" / "run.json").read_text(encoding="utf-8"))
    t = run["throughput"]
    assert t["tokens_processed"] == run["train_tokens"]  # one epoch
    assert t["tokens_per_s"] > 0 and 0 < t["mfu"] < 1 and t["matmul_peak_flops"] > 0
    shown = lorakit("show", "exp", "--outputs", str(out))
    assert shown.code == 0, shown.err
    (line,) = [x for x in shown.out.splitlines() if x.strip().startswith("throughput")]
    assert "tokens/s over" in line and "MFU" in line and "GFLOP/s (fp32 matmul peak)" in line


def test_the_peak_is_measured_with_the_op_the_layers_run():
    """A bf16 torch.mm on a CPU without native bf16 is ~20x slower than a bf16 linear: a peak measured with
    it put a bf16 run's MFU above 100%. The peak must be at least what a layer-shaped linear achieves."""
    import time

    import torch

    x, w = torch.randn(720, 384).bfloat16(), torch.randn(1536, 384).bfloat16()
    torch.nn.functional.linear(x, w)
    start = time.perf_counter()
    for _ in range(5):
        torch.nn.functional.linear(x, w)
    layer_rate = 5 * 2 * 720 * 384 * 1536 / (time.perf_counter() - start)
    assert throughput.measure_peak(torch.device("cpu"), "bf16", seconds=0.3) > 0.5 * layer_rate
