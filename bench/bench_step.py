"""Where a lorakit training step's time goes, and whether ``torch.compile`` pays for itself.

Run: .venv/bin/python bench/bench_step.py [--steps 60] [--max-rows 1500] [--max-len 128] [--batch-size 16]

The benchmark builds the real training loop of the ``bench_vs_hf.py`` experiment (all-MiniLM-L6-v2, LoRA
rank 16 on query/value, the demo's tweets, length-grouped batches) and times optimizer steps three ways:

- ``eager``: the loop as ``lorakit train`` runs it (median step time over ``--steps`` steps);
- ``profile``: the same steps under ``torch.profiler``: the share of matrix multiplies, of dropout's random
  numbers (``aten::bernoulli_``) and of everything else;
- ``compile``: the classifier wrapped in ``torch.compile(dynamic=True)`` (one graph for every sequence
  length; a static graph would recompile for each new length): the first step's time (compilation) and the
  median of the steps after it, then how many steps the compilation needs to pay back.

Results go to bench/results/step.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_training_args
from bench_vs_hf import REPO, lorakit_config, write_config


def build_loop(config: Path, outputs: Path) -> Any:
    """The training loop ``lorakit train`` would run, before its first step (nothing written)."""
    from lorakit.config.schema import load_config
    from lorakit.plugins import get_plugins
    from lorakit.runs.layout import RunLayout
    from lorakit.training import runner
    from lorakit.training.loop import SignalCatcher

    cfg, _ = load_config(config, [])
    plugins = get_plugins()
    layout = RunLayout.for_exp(cfg.exp_id, outputs)
    setup = runner._setup(cfg, plugins, layout, "bench", check=False)
    return runner._build_loop(cfg, plugins, layout, setup, precision="fp32", signals=SignalCatcher())


def time_steps(loop: Any, batches: list[Any], steps: int) -> list[float]:
    """Seconds per optimizer step (one batch each), each ended by a host sync."""
    loop.classifier.train()
    times = []
    for b in range(steps):
        started = time.perf_counter()
        loss = loop._forward_backward(batches[b % len(batches)], 1)
        loop._optimizer_step()
        loss.item()
        times.append(time.perf_counter() - started)
    return times


def op_shares(loop: Any, batches: list[Any], steps: int) -> dict[str, float]:
    """Share of the profiled CPU time in matmuls, in dropout's random numbers, and in the rest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        time_steps(loop, batches, steps)
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(self_us.values())
    matmul = sum(self_us.get(k, 0) for k in ("aten::mm", "aten::addmm", "aten::bmm"))
    rng = self_us.get("aten::bernoulli_", 0)
    return {
        "matmul": round(matmul / total, 3),
        "dropout_rng": round(rng / total, 3),
        "other": round((total - matmul - rng) / total, 3),
    }


def benchmark(args: argparse.Namespace) -> dict[str, Any]:

    work = Path(tempfile.mkdtemp(prefix="lorakit-bench-step-"))
    try:
        return measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    config = write_config(
        lorakit_config(args, exp_id="bench_step", cache_dir=work / "cache"), work / "exp.toml"
    )
    loop = build_loop(config, work / "outputs")
    batches = loop._batches(1)
    tokens = [int(loop.train_split.lengths()[b].sum()) for b in batches[: args.steps]]
    time_steps(loop, batches, 3)  # warm-up
    eager = time_steps(loop, batches, args.steps)
    shares = op_shares(loop, batches, min(args.steps, 20))
    results: dict[str, Any] = {
        "benchmark": "where a training step's time goes; torch.compile against eager",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/bench_step.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "tokens_per_step_median": statistics.median(tokens),
        "eager_step_s": round(statistics.median(eager), 4),
        "profile_shares": shares,
    }
    if not args.no_compile:
        loop.classifier = torch.compile(loop.classifier, dynamic=True)
        compiled = time_steps(loop, batches, args.steps)
        step = statistics.median(compiled[1:])
        saved = results["eager_step_s"] - step
        results.update(
            compile_first_step_s=round(compiled[0], 2),
            compiled_step_s=round(step, 4),
            compiled_over_eager=round(step / results["eager_step_s"], 3),
            break_even_steps=round((compiled[0] - step) / saved) if saved > 0 else None,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_training_args(parser)
    parser.set_defaults(max_rows=1500, max_len=128, batch_size=16, rank=16, alpha=32)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per mode")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "step.json"))
    args = parser.parse_args()
    with contextlib.redirect_stderr(sys.stdout):
        results = benchmark(args)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
