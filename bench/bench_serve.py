"""``lorakit serve`` against a naive server (bench/naive_server.py), with real uvicorn processes and real
HTTP clients (httpx), on all-MiniLM-L6-v2 and the demo tweets.

Run: .venv/bin/python bench/bench_serve.py [--requests 200] [--concurrency 1,8,32]

Setup: one experiment trained on the demo data (600 tweets, 1 epoch; accuracy does not matter here), and 19
copies of it under other exp_ids (each loads as its own adapter). Then, for each concurrency level, the
same requests (one tweet each, as a classification service mostly gets them) go to each server in turn,
``--repeats`` times interleaved (both servers stay up): the medians of throughput (texts/s) and of p50/p99
latency. Memory: the resident set of a ``lorakit serve`` process after
warm-up with 1 and with 20 experiments loaded, and of the naive server with its one.
Targets (issue 16): at concurrency 32, >= 3x the naive throughput with a p99 no worse; 20 experiments
<= 1.25x the memory of one. Results go to bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_training_args
from bench_vs_hf import CORPUS, REPO, child_env, lorakit_config, run_timed, write_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, env=child_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd} exited: {log.read_text()[-2000:]}") from None
            time.sleep(0.3)
    raise SystemExit(f"{cmd} did not come up")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, texts: list[str], concurrency: int, experiment: str | None) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    queue = list(texts)

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            text = queue.pop()
            body: dict[str, Any] = {"texts": [text]}
            if experiment:
                body["experiment"] = experiment
            started = time.perf_counter()
            response = await client.post(f"{url}/v1/predict", json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "texts_per_s": round(len(texts) / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
    }


def sample_texts(n: int) -> list[str]:
    import pandas as pd

    from lorakit.config.loader import resolve_path

    path = resolve_path(CORPUS, REPO)
    frame = pd.read_csv(path, encoding_errors="replace", usecols=["text"]).dropna()
    return frame["text"].astype(str).sample(n, random_state=0).tolist()


def prepare(args: argparse.Namespace, work: Path) -> Path:
    """Train the experiment and copy it 19 times; the outputs folder."""
    args.max_rows, args.epochs = 600, 1
    config = write_config(
        lorakit_config(args, exp_id="serve0", cache_dir=work / "cache"), work / "serve0.toml"
    )
    outputs = work / "outputs"
    if (outputs / "serve19" / "run.json").is_file():
        return outputs
    run_timed(
        [sys.executable, "-m", "lorakit", "train", str(config), "--outputs", str(outputs)], work / "train.log"
    )
    for i in range(1, 20):
        copy = outputs / f"serve{i}"
        shutil.copytree(outputs / "serve0", copy)
        run = json.loads((copy / "run.json").read_text())
        run["exp_id"] = copy.name
        (copy / "run.json").write_text(json.dumps(run))
    return outputs


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    outputs = prepare(args, work)
    texts = sample_texts(args.requests)
    levels = [int(c) for c in args.concurrency.split(",")]
    systems = {
        "lorakit": lambda port: [
            sys.executable,
            "-m",
            "lorakit",
            "serve",
            "serve0",
            "--outputs",
            str(outputs),
            "--port",
            str(port),
        ],
        "naive": lambda port: [
            sys.executable,
            str(REPO / "bench" / "naive_server.py"),
            str(outputs / "serve0"),
            "--port",
            str(port),
        ],
    }
    results: dict[str, Any] = {"throughput": {}, "memory_mb": {}, "repeats": args.repeats}
    procs, urls = {}, {}
    try:  # both servers up at once (an idle one costs nothing), so that repeats can interleave
        for name, command in systems.items():
            port = free_port()
            procs[name] = start(command(port), port, work / f"{name}.log")
            urls[name] = f"http://127.0.0.1:{port}"
            asyncio.run(load(urls[name], texts[:32], 8, None))  # warm-up
            results["memory_mb"][f"{name}_1"] = round(rss_mb(procs[name].pid), 1)
        runs: dict[str, list[dict[str, float]]] = {}
        for repeat in range(args.repeats):
            for level in levels:
                for name in systems:
                    runs.setdefault(f"{name}@{level}", []).append(
                        asyncio.run(load(urls[name], texts, level, None))
                    )
                    print(
                        f"  repeat {repeat} {name:<8} concurrency {level:>3}: {runs[f'{name}@{level}'][-1]}",
                        flush=True,
                    )
        for key, measured in runs.items():
            results["throughput"][key] = {
                field: statistics.median(m[field] for m in measured) for field in measured[0]
            }
            results["throughput"][key]["all_texts_per_s"] = [m["texts_per_s"] for m in measured]
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=60)
    port = free_port()
    every = [f"serve{i}" for i in range(20)]
    cmd = [sys.executable, "-m", "lorakit", "serve", *every, "--outputs", str(outputs), "--port", str(port)]
    proc = start(cmd, port, work / "lorakit20.log")
    try:
        for exp in every:
            asyncio.run(load(f"http://127.0.0.1:{port}", texts[:8], 4, exp))
        results["memory_mb"]["lorakit_20"] = round(rss_mb(proc.pid), 1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    top = max(levels)
    mine, theirs = results["throughput"][f"lorakit@{top}"], results["throughput"][f"naive@{top}"]
    memory = results["memory_mb"]
    results["ratios"] = {
        f"throughput_x_at_{top}": round(mine["texts_per_s"] / theirs["texts_per_s"], 2),
        f"p99_ratio_at_{top}": round(mine["p99_ms"] / theirs["p99_ms"], 2),
        "memory_20_over_1": round(memory["lorakit_20"] / memory["lorakit_1"], 3),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_training_args(parser)
    parser.set_defaults(max_len=128, batch_size=16, rank=16, alpha=32)
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "serve.json"))
    parser.add_argument("--work", help="keep the trained experiments in this folder (and reuse them)")
    args = parser.parse_args()
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        results = benchmark(args, Path(args.work))
    else:
        with tempfile.TemporaryDirectory(prefix="lorakit-bench-serve-") as tmp:
            results = benchmark(args, Path(tmp))
    results.update(
        benchmark="lorakit serve against a naive one-forward-per-request server",
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        command="python bench/bench_serve.py " + " ".join(sys.argv[1:]),
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: results[k] for k in ("throughput", "memory_mb", "ratios")}, indent=2))


if __name__ == "__main__":
    main()
