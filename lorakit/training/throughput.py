"""Throughput accounting: tokens processed, tokens/s and model-FLOPs utilisation (MFU) of a run.

FLOPs per token come from the encoder's shapes (a BERT-style layer: four h×h projections, an h×i and an
i×h feed-forward pair, and attention over the batch's sequence length). A training token costs the forward
pass plus a backward pass that computes input gradients everywhere but weight gradients only for the
trainable weights (the frozen base needs none), so about twice the forward pass for LoRA. MFU is the
achieved model FLOPs per second over the machine's matmul peak in the precision the run used: measured once
per machine, precision and thread count with a large matmul, and cached (``~/.cache/lorakit/peak.json``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

PEAK_CACHE_ENV = "LORAKIT_PEAK_CACHE"


def encoder_shapes(model_config: Any) -> tuple[int, int, int]:
    """(layers, hidden, intermediate) of a Hugging Face encoder config."""
    layers = int(getattr(model_config, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(model_config, "hidden_size", 0) or 0)
    intermediate = int(getattr(model_config, "intermediate_size", 0) or 4 * hidden)
    return layers, hidden, intermediate


def forward_flops_per_token(model_config: Any, seq_len: float) -> float:
    """Matmul FLOPs of one token's forward pass through the encoder (2 FLOPs per multiply-add)."""
    layers, hidden, intermediate = encoder_shapes(model_config)
    projections = 4 * hidden * hidden + 2 * hidden * intermediate
    attention = 2 * seq_len * hidden  # scores (q·k) and the weighted sum of values, per token
    return 2.0 * layers * (projections + attention)


def train_flops_per_token(model_config: Any, seq_len: float, trainable_params: int) -> float:
    """Forward, input gradients (as costly as the forward), and weight gradients of the trainable weights."""
    forward = forward_flops_per_token(model_config, seq_len)
    return 2 * forward + 2.0 * trainable_params


def _cache_path() -> Path:
    explicit = os.environ.get(PEAK_CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lorakit" / "peak.json"


def _machine_key(device: Any, precision: str) -> str:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_model() or platform.processor() or "cpu"
    device_type = device.type if device is not None else "cpu"
    threads = torch.get_num_threads()
    # "linear": the op measured (a key without it was measured with torch.mm, too low for bf16 on a CPU)
    return f"{name}|{device_type}|{precision}|linear|torch {torch.__version__}|{threads} threads"


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def measure_peak(device: Any, precision: str, *, seconds: float = 0.5) -> float:
    """The best matmul FLOP/s of this device in ``precision`` (fp32 | bf16 | fp16), measured now.

    Measured with ``F.linear``, the op the encoder's layers run: on a CPU without native bf16, a bf16
    ``torch.mm`` takes a path some 20 times slower than a bf16 ``linear``, and a peak measured with it
    would put the MFU of a bf16 run above 100%."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    cuda = getattr(device, "type", "cpu") == "cuda"
    n = 4096 if cuda else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    linear = torch.nn.functional.linear
    with torch.inference_mode():
        linear(a, b)  # warm up (kernels, caches)
        while True:
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(4 if cuda else 1):
                linear(a, b)
            if cuda:
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            best = max(best, (4 if cuda else 1) * 2.0 * n**3 / elapsed)
            if time.perf_counter() > deadline:
                return best


def matmul_peak(device: Any, precision: str) -> float:
    """This machine's matmul peak in ``precision``: from the cache, else measured once and cached."""
    from ..fsutil import write_json_atomic

    key = _machine_key(device, precision)
    path = _cache_path()
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    value = cached.get(key)
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    peak = measure_peak(device, precision)
    cached[key] = peak
    try:
        write_json_atomic(path, cached)
    except OSError:
        pass  # an unwritable cache only costs the next run half a second
    return peak


def run_throughput(
    *,
    model_config: Any,
    train_tokens: int,
    train_rows: int,
    epochs: int,
    train_seconds: float,
    trainable_params: int,
    precision: str,
    device: Any,
    world_size: int = 1,
) -> dict[str, Any]:
    """What run.json records: tokens processed, tokens/s and MFU of the training epochs."""
    tokens = train_tokens * epochs
    if tokens <= 0 or train_seconds <= 0:
        return {}
    seq_len = train_tokens / max(train_rows, 1)
    per_token = train_flops_per_token(model_config, seq_len, trainable_params)
    per_second = tokens / train_seconds
    peak = matmul_peak(device, precision) * world_size
    return {
        "tokens_processed": tokens,
        "tokens_per_s": round(per_second, 1),
        "train_flops_per_token": round(per_token),
        "matmul_peak_flops": round(peak),
        "mfu": round(per_second * per_token / peak, 4) if peak > 0 else None,
    }
