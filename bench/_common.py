"""What the training benchmarks share: the experiment settings every system runs with."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_training_args(
    parser: argparse.ArgumentParser, *, max_rows_help: str = "rows sampled from the corpus"
) -> None:
    """The sample and hyper-parameters (identical for lorakit and the hand-written script)."""
    parser.add_argument("--max-rows", type=int, default=4000, help=max_rows_help)
    parser.add_argument("--val-ratio", type=float, default=0.15)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)


def run_and_save(
    args: argparse.Namespace,
    prefix: str,
    benchmark: Callable[[Path], dict[str, Any]],
    report: Callable[..., None],
) -> None:
    """Run ``benchmark`` in a temp work folder (kept with --keep), write its results to --output, report them."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        results = benchmark(work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    report(results)
    print(f"results   {out}")
