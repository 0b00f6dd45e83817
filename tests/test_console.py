"""What ``lorakit train`` shows: on a terminal one bar for the run with the log lines above it, never inside
it; off a terminal plain log lines; a single-label summary that names each figure once."""

from __future__ import annotations

import logging
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO ")
BAR = re.compile(r"epoch 1/1: +\d+%\|")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """A single-label run of 8 steps, one epoch: a log line at every step, while the bar is up."""
    import tomli_w

    from lorakit.testing import synthetic_frame

    root = tmp_path_factory.mktemp("console")
    synthetic_frame(64, seed=4, tasks=1).to_csv(root / "train.csv", index=False)
    config = {
        "exp_id": "console",
        "data": {"raw_data_path": str(root / "train.csv"), "cache_dir": str(root / "cache"), "max_len": 32,
                 "label_column": "risk_level", "val_ratio": 0.25},
        "model": {"arch": str(tiny_bert), "lora": {"rank": 4, "alpha": 8}},
        "train": {"batch_size": 6, "epochs": 1, "lr": 5e-3},
    }  # fmt: skip
    path = root / "console.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LORAKIT_NO_PROGRESS"}
    return {**env, "COLUMNS": "120"}


def _run_on_terminal(*args: str, timeout: float = 300) -> tuple[int, str]:
    """``python -m lorakit ARGS`` with stdout and stderr on a pseudo-terminal of 120 columns."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorakit", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=_env(),
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", errors="replace")


def _pieces(text: str) -> list[str]:
    """What each carriage return or newline starts: where a terminal puts the cursor back at column 0."""
    return re.split(r"[\r\n]", text)


def _summary(text: str) -> dict[str, str]:
    """The ``  name  value`` lines of the end-of-run summary."""
    return dict(re.findall(r"^  (\w+) +(\d\.\d{4})$", text.replace("\r", ""), flags=re.M))


def test_on_a_terminal_one_bar_and_the_log_lines_above_it(tiny_config: Path, tmp_path: Path) -> None:
    code, text = _run_on_terminal("train", str(tiny_config), "--outputs", str(tmp_path))
    assert code == 0, text
    assert BAR.search(text), f"no progress bar in:\n{text}"
    assert "8/8" in text and "step/s" in text and "best avg_f1" in text and "loss " in text
    logged = [piece for piece in _pieces(text) if " INFO " in piece]
    assert len(logged) >= 8, text  # a line per step, the epoch's, the reload check's, the end's
    spliced = [piece for piece in logged if not STAMP.match(piece)]
    assert not spliced, f"log lines written into the bar: {spliced}"
    # one name for each figure of a single-label run
    assert set(_summary(text)) == {"accuracy", "f1"}, text
    # the log file is as it always was: log lines, no bar
    log_text = (tmp_path / "console" / "train.log").read_text(encoding="utf-8")
    assert "\r" not in log_text and "%|" not in log_text
    assert all(STAMP.match(line) for line in log_text.splitlines() if " INFO " in line)


def test_off_a_terminal_log_lines_and_no_bar(tiny_config: Path, tmp_path: Path) -> None:
    # -v: every name of each figure, as metrics.json has them
    proc = run_cli("-v", "train", str(tiny_config), "--outputs", str(tmp_path), env=_env())
    assert proc.returncode == 0, proc.stderr
    assert not BAR.search(proc.stderr) and "step/s" not in proc.stderr and "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert sum(bool(STAMP.match(line)) for line in lines) >= 8, proc.stderr
    assert {"risk_level_f1", "avg_f1", "f1", "risk_level_accuracy", "accuracy"} <= set(_summary(proc.stdout))


def test_the_bar_starts_at_a_resumed_step_and_keeps_log_lines_whole(capsys: pytest.CaptureFixture) -> None:
    from lorakit.training.console import RunProgress

    logger = logging.getLogger("lorakit.test_console")
    console = logging.StreamHandler()  # stderr as captured now
    logger.addHandler(console)
    logger.propagate = False
    try:
        with RunProgress(enabled=True, logger=logger, metric="f1", epochs=2, total=10, initial=6) as bar:
            bar.epoch(2)
            bar.update(loss=0.5, best=0.75)
            logger.warning("a log line")
            bar.step()
        assert logger.handlers == [console]  # the redirect is undone with the bar
    finally:
        logger.removeHandler(console)
    err = capsys.readouterr().err
    assert "6/10" in err and "loss 0.5000, best f1 0.7500" in err
    assert "a log line" in _pieces(err)  # a line of its own, not a tail of the bar
