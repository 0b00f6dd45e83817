"""Benchmark what a second task head costs: double-label against single-label training on the same rows.

Run: .venv/bin/python bench/bench_heads.py [--repeats 3] [--quick] [--max-rows 4000] [--epochs 2]

Single: sentiment. Double: sentiment + agreement (derived from the confidence score, as in
configs/demo_double.toml), loss weights 0.7/0.3. Rows without a confidence score have no agreement label, so
both runs read a copy of the demo corpus without them: same sample, same split, same batches; the script
checks that the two prepared datasets hold the same rows. Both caches are built before timing.

Each run is ``python -m lorakit train`` in its own process, single and double in turn (the order rotates
each repeat). Step time: per epoch ``epoch_seconds`` (metrics.json, training only, no evaluation) over the
optimizer steps of the epoch; per run the median over epochs; reported the median over runs. Peak memory:
env_info.json's ``peak_memory_mb`` (CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak RSS,
which includes the Python/torch baseline, hence also the difference in MiB). Targets: both ratios <= 1.05.
Results go to bench/results/heads.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import add_training_args, run_and_save  # bench/ is the script's folder, so on sys.path
from bench_vs_hf import CORPUS, REPO, lorakit_config, prepare, run_timed, warm_page_cache, write_config

TARGET = 1.05
QUICK = {"max_rows": 600, "epochs": 1, "repeats": 1}
DERIVE = {"column": "confidence", "bins": [0.0, 0.999, 1.0], "labels": ["split", "unanimous"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (medians reported)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 600 rows, 1 epoch, 1 repeat")
    add_training_args(parser)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "heads.json"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, outputs)")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def corpus_with_confidence(work: Path) -> Path:
    """The demo corpus without rows that lack a confidence score (UTF-8, bad bytes already replaced)."""
    import pandas as pd

    from lorakit.config import resolve_path

    source = resolve_path(CORPUS, REPO)
    frame = pd.read_csv(source, encoding_errors="replace", keep_default_na=False, na_values=[""])
    kept = frame[pd.to_numeric(frame["confidence"], errors="coerce").notna()]
    path = work / "corpus_with_confidence.csv"
    kept.to_csv(path, index=False)
    return path


def configs(args: argparse.Namespace, work: Path, corpus: Path) -> dict[str, Path]:
    common = {"raw_data_path": str(corpus), "drop_unknown_labels": True}
    single = lorakit_config(args, exp_id="bench_single", cache_dir=work / "cache", extra_data=common)
    double = lorakit_config(args, exp_id="bench_double", cache_dir=work / "cache", extra_data=common)
    double["task_type"] = "double_cls"
    double["data"]["derive"] = {"agreement": DERIVE}
    double["data"]["label_subset"] = {
        "sentiment": single["data"]["label_subset"],
        "agreement": DERIVE["labels"],
    }
    double["train"]["loss_weight"] = [0.7, 0.3]
    return {
        "single": write_config(single, work / "single.toml"),
        "double": write_config(double, work / "double.toml"),
    }


def step_ms(outputs: Path, exp_id: str, batch_size: int) -> dict[str, Any]:
    folder = outputs / exp_id
    metrics = json.loads((folder / "metrics.json").read_text())
    run = json.loads((folder / "run.json").read_text())
    env = json.loads((folder / "env_info.json").read_text())
    steps = math.ceil(run["data_stats"]["split_sizes"]["train"] / batch_size)
    epochs = [metrics[k] for k in metrics if k.startswith("epoch_")]
    per_epoch = [1000 * e["epoch_seconds"] / steps for e in epochs]
    return {
        "step_ms": round(statistics.median(per_epoch), 2),
        "epoch_step_ms": [round(v, 2) for v in per_epoch],
        "steps_per_epoch": steps,
        "peak_memory_mb": env.get("peak_memory_mb"),
        "device": run.get("device_used"),
        "best_avg_f1": metrics["best"]["avg_f1"],
    }


def main() -> None:
    args = parse_args()
    run_and_save(args, "lorakit-heads-", lambda work: benchmark(args, work), report)


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    paths = configs(args, work, corpus_with_confidence(work))
    prepared = {variant: prepare(path) for variant, path in paths.items()}
    for name in ("train", "val"):
        a, b = prepared["single"].splits[name], prepared["double"].splits[name]
        if len(a) != len(b) or (a.rows != b.rows).any():
            raise SystemExit(f"single and double runs would use different {name} rows")
    warm_page_cache(paths["single"])

    variants = ["single", "double"]
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            outputs = work / f"{variant}-{repeat}"
            cmd = [
                sys.executable,
                "-m",
                "lorakit",
                "train",
                str(paths[variant]),
                "--force",
                "--outputs",
                str(outputs),
            ]
            load_before = os.getloadavg()[0]
            timing = run_timed(cmd, work / f"{variant}-{repeat}.log")
            run = {
                "variant": variant,
                "repeat": repeat,
                **timing,
                **step_ms(outputs, f"bench_{variant}", args.batch_size),
                "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
            runs.append(run)
            print(
                f"  repeat {repeat + 1}/{args.repeats} {variant:<7} step {run['step_ms']:8.1f} ms  "
                f"peak {run['peak_memory_mb']:7.1f} MB  wall {timing['wall_s']:6.1f} s  load {load_before:.1f}",
                flush=True,
            )

    medians = {
        v: {
            key: statistics.median(r[key] for r in runs if r["variant"] == v)
            for key in ("step_ms", "peak_memory_mb", "wall_s")
        }
        for v in variants
    }
    single, double = medians["single"], medians["double"]
    step_ratio = double["step_ms"] / single["step_ms"]
    memory_ratio = double["peak_memory_mb"] / single["peak_memory_mb"]
    import torch

    return {
        "benchmark": "double-label vs single-label step time and peak memory",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": runs[0]["device"],
        },
        "settings": {
            k: getattr(args, k)
            for k in ("repeats", "max_rows", "max_len", "batch_size", "epochs", "rank", "lr", "seed")
        },
        "rows": {name: len(prepared["single"].splits[name]) for name in ("train", "val")},
        "targets": {"step_ratio_max": TARGET, "memory_ratio_max": TARGET},
        "medians": medians,
        "comparison": {
            "step_ratio": round(step_ratio, 4),
            "memory_ratio": round(memory_ratio, 4),
            "memory_delta_mb": round(double["peak_memory_mb"] - single["peak_memory_mb"], 1),
            "step_ok": step_ratio <= TARGET,
            "memory_ok": memory_ratio <= TARGET,
        },
        "runs": runs,
    }


def report(results: dict[str, Any]) -> None:
    s, m, c = results["settings"], results["machine"], results["comparison"]
    label = " (QUICK smoke settings, not the benchmark)" if results["quick"] else ""
    print(f"\ndouble-label vs single-label{label}")
    print(f"machine   {m['cpu']}, {m['cpu_count']} CPU cores, torch {m['torch']}, device {m['device']}")
    print(
        f"settings  {results['rows']['train']} train rows, max_len {s['max_len']}, batch {s['batch_size']}, "
        f"epochs {s['epochs']}, repeats {s['repeats']}"
    )
    for variant, med in results["medians"].items():
        print(f"{variant:<8} step {med['step_ms']:8.1f} ms   peak memory {med['peak_memory_mb']:8.1f} MB")
    print(
        f"double / single: step {c['step_ratio']:.3f} (target <= {TARGET}: {'yes' if c['step_ok'] else 'NO'}), "
        f"memory {c['memory_ratio']:.3f} ({c['memory_delta_mb']:+.1f} MB; target <= {TARGET}: "
        f"{'yes' if c['memory_ok'] else 'NO'})"
    )


if __name__ == "__main__":
    main()
