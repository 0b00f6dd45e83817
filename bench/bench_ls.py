"""Benchmark ``lorakit ls --table`` with 500 experiments: the whole command, as a user runs it.

Run: .venv/bin/python bench/bench_ls.py [--experiments 500] [--repeats 5]

Creates fake experiment folders (run.json, metrics.json, config_copy.toml, label_map.json, env_info.json in
the trainer's format) in a temporary outputs folder, builds the index once, then times
``python -m lorakit ls --table --outputs DIR`` as a subprocess (interpreter start included) and reports the
median. Target: under 0.3 s. For scale it also times a bare interpreter and ``import lorakit.cli``, and
``compare --sort-by avg_f1``. Exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.3
RISK = ["低风险", "中风险", "高风险"]
ADOPT = ["采纳", "不采纳"]


def fake_experiment(outputs: Path, i: int, rng: random.Random) -> None:
    """One experiment folder; every fourth is double-label, a few failed or still running."""
    tasks = {"risk_level": RISK, "is_adopt": ADOPT} if i % 4 == 0 else {"risk_level": RISK}
    exp_id = f"exp_{i:04d}_{'double' if len(tasks) == 2 else 'bert'}"
    lr, rank = rng.choice([1e-5, 2e-5, 5e-5, 1e-4, 2e-4]), rng.choice([4, 8, 16, 32])
    status = "failed" if i % 17 == 0 else "running" if i % 23 == 0 else "completed"
    folder = outputs / exp_id
    folder.mkdir(parents=True)
    metrics: dict = {}
    for epoch in range(1, 4):
        f1 = round(rng.uniform(0.6, 0.95), 4)
        values = {
            f"{t}_{m}": round(f1 + rng.uniform(-0.02, 0.02), 4) for t in tasks for m in ("accuracy", "f1")
        }
        metrics[f"epoch_{epoch}"] = {**values, "avg_f1": f1, "train_loss": round(1.2 - f1, 4)}
    best = max(range(1, 4), key=lambda e: metrics[f"epoch_{e}"]["avg_f1"])
    metrics["best"] = {"epoch": best, **metrics[f"epoch_{best}"]}
    run = {
        "exp_id": exp_id,
        "status": status,
        "create_time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_716_000_000 + 600 * i)),
        "end_time": None,
        "task_type": "double_cls" if len(tasks) == 2 else "single_cls",
        "tasks": tasks,
        "base_config": "templates/bert_lora_template.toml",
        "config_path": f"/work/configs/{exp_id}.toml",
        "key_params": {
            "model": "bert-base-chinese",
            "backbone": "bert",
            "method": "lora",
            "lora_rank": rank,
            "lora_alpha": 2 * rank,
            "lr": lr,
            "batch_size": 32,
            "epochs": 3,
            "max_len": 128,
            "loss_weight": [0.6, 0.4] if len(tasks) == 2 else None,
        },
        "headline_metric": "avg_f1",
        "device_used": f"GPU-{i % 4}",
        "env_version": "torch==2.13.0, transformers==4.46.0, peft==0.13.0",
        "error": None,
        "notes": [],
    }
    config = (
        f'exp_id = "{exp_id}"\nseed = {i}\n\n[model]\narch = "bert-base-chinese"\n\n[model.lora]\n'
        f"rank = {rank}\nalpha = {2 * rank}\n\n[train]\nlr = {lr!r}\nbatch_size = 32\nepochs = 3\n"
    )
    label_map = {
        "task_type": run["task_type"],
        "tasks": {t: {"labels": v, "global_ids": []} for t, v in tasks.items()},
    }
    env = {"python": platform.python_version(), "packages": {"torch": "2.13.0"}, "device": "cuda:0"}
    (folder / "run.json").write_text(json.dumps(run, ensure_ascii=False), encoding="utf-8")
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (folder / "config_copy.toml").write_text(config, encoding="utf-8")
    (folder / "label_map.json").write_text(json.dumps(label_map, ensure_ascii=False), encoding="utf-8")
    (folder / "env_info.json").write_text(json.dumps(env), encoding="utf-8")


def timed(cmd: list[str], repeats: int) -> tuple[float, str]:
    """Median wall time of ``cmd`` over ``repeats`` runs (after one warm-up run), and its last stdout."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5, help="runs to time (the median is reported)")
    args = parser.parse_args()

    from lorakit.runs.index import ExperimentIndex

    with tempfile.TemporaryDirectory(prefix="lorakit-bench-ls-") as tmp:
        outputs = Path(tmp) / "outputs"
        rng = random.Random(0)
        for i in range(args.experiments):
            fake_experiment(outputs, i, rng)
        start = time.perf_counter()
        entries = ExperimentIndex(outputs).rebuild()
        rebuild_s = time.perf_counter() - start
        index_kb = (outputs / "experiment_index.json").stat().st_size / 1024

        py = sys.executable
        bare, _ = timed([py, "-c", "pass"], args.repeats)
        imp, _ = timed([py, "-c", "import lorakit.cli"], args.repeats)
        ls_s, out = timed([py, "-m", "lorakit", "ls", "--table", "--outputs", str(outputs)], args.repeats)
        cmp_s, _ = timed(
            [py, "-m", "lorakit", "compare", "--sort-by", "avg_f1", "--outputs", str(outputs)], args.repeats
        )
        rows = len(out.splitlines()) - 2

    print(f"python {platform.python_version()} on {platform.machine()}, {args.experiments} experiments")
    size = f"{len(entries)} entries, {index_kb:.0f} KiB"
    print(f"  index rebuild (in-process)        {rebuild_s * 1000:7.1f} ms  ({size})")
    print(f"  python -c pass                    {bare * 1000:7.1f} ms")
    print(f"  python -c 'import lorakit.cli'    {imp * 1000:7.1f} ms")
    print(
        f"  lorakit ls --table                {ls_s * 1000:7.1f} ms  ({rows} rows; median of {args.repeats})"
    )
    print(f"  lorakit compare --sort-by avg_f1  {cmp_s * 1000:7.1f} ms")
    verdict = "OK" if ls_s < TARGET_S else "OVER"
    print(f"target ls < {TARGET_S * 1000:.0f} ms: {verdict}")
    sys.exit(0 if ls_s < TARGET_S else 1)


if __name__ == "__main__":
    main()
