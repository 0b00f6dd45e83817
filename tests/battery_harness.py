"""The harness of the bad-input battery (issue 12): run ``lorakit`` in this process, see what it said.

A case is an input (argv, files, environment), the exit code it must give, a line it must print, and
nothing left behind: the folders it was given look exactly as they did before. Running the CLI in this
process (``lorakit.cli.main`` with a fresh plugin manager) costs milliseconds where a subprocess costs the
7 s of importing torch and peft, which is what lets the battery hold a hundred cases and more.

Usage::

    from battery_harness import lorakit, snapshot, expect_error

    before = snapshot(tmp_path)
    result = lorakit("train", str(config), "--outputs", str(out))
    expect_error(result, 2, "train.lr: must be a finite number")
    assert snapshot(tmp_path) == before
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@contextlib.contextmanager
def _environment(env: Mapping[str, str | None] | None, cwd: Path | None) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in (env or {})}
    old_cwd = os.getcwd()
    try:
        for key, value in (env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(old_cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def lorakit(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
    stdin: str = "",
    path: Sequence[Path] = (),
) -> Outcome:
    """Run ``lorakit ARGS`` in this process with fresh plugins; return its exit code and output.

    ``path`` is put in front of ``sys.path`` for the call: a folder holding a ``*.dist-info`` is an installed
    plugin, found through its entry points as an installed package would be.
    """
    import importlib
    import sys

    from lorakit import cli, plugins

    out, err = io.StringIO(), io.StringIO()
    code = 0
    previous = plugins.set_plugins(None)  # load entry points afresh, honouring env
    old_stdin, old_showwarning, old_path = sys.stdin, warnings.showwarning, list(sys.path)
    sys.path[:0] = [str(p) for p in path]
    importlib.invalidate_caches()
    try:
        with (
            _environment({"LORAKIT_NO_PROGRESS": "1", **(env or {})}, cwd),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
        ):
            sys.stdin = io.StringIO(stdin)
            warnings.simplefilter("default")
            try:
                cli.main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.path[:] = old_path
        sys.stdin = old_stdin
        warnings.showwarning = old_showwarning
        plugins.set_plugins(previous)
    return Outcome(code=code, out=out.getvalue(), err=err.getvalue())


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time: equal snapshots, nothing changed.

    A folder counts by its presence only: a lock file made and removed again changes its mtime.
    """
    result: dict[str, tuple[int, int]] = {}
    for path in sorted(root.rglob("*")):
        try:
            stat = path.lstat()
        except FileNotFoundError:
            continue
        if path.is_dir() and not path.is_symlink():
            result[str(path.relative_to(root))] = (-1, 0)
            continue
        size = stat.st_size if path.is_file() else -1
        result[str(path.relative_to(root))] = (size, stat.st_mtime_ns)
    return result


def expect_error(result: Outcome, code: int, expected: str) -> None:
    """The command exited with ``code`` and said ``expected`` in exactly one line (no traceback)."""
    assert result.code == code, (result.code, result.err, result.out)
    assert "Traceback" not in result.err, result.err
    lines = result.err_lines
    hits = [line for line in lines if expected in line]
    assert hits, f"{expected!r} not in {lines}"
    errors = [line for line in lines if line.startswith(("Error", "lorakit:"))]
    assert len(errors) <= 1 or all(expected in e for e in errors), lines


def expect_warning(result: Outcome, expected: str, code: int = 0) -> None:
    """The command went on (exit ``code``) and warned ``expected`` in one line."""
    assert result.code == code, (result.code, result.err, result.out)
    assert "Traceback" not in result.err, result.err
    assert any(line.startswith("Warning") and expected in line for line in result.err_lines), result.err


def case(*values: object, id: str) -> object:
    """``pytest.param`` with a readable id (the battery's cases are listed by id)."""
    return pytest.param(*values, id=id)


def tiny_experiment(root: Path, tiny_bert: Path, *, epochs: int = 1) -> list[str]:
    """Write a one-task experiment ``exp`` (``exp.toml``, 60 synthetic rows, a label map) into ``root`` and
    return the ``--set`` options that run it on the tiny model: ``lorakit("train", root/"exp.toml", *sets)``."""
    import json

    from lorakit.testing import synthetic_frame, tiny_overrides

    synthetic_frame(60, seed=3, tasks=1).to_csv(root / "train.csv", index=False)
    labels = ["低风险", "中风险", "高风险"]
    (root / "labels.json").write_text(
        json.dumps({label: i for i, label in enumerate(labels)}, ensure_ascii=False), encoding="utf-8"
    )
    (root / "exp.toml").write_text(
        'exp_id = "exp"\n[data]\nraw_data_path = "train.csv"\nglobal_label_map = "labels.json"\n'
        f'label_subset = {json.dumps(labels, ensure_ascii=False)}\n[model]\narch = "x"\n',
        encoding="utf-8",
    )
    return [f"--set={o}" for o in tiny_overrides(tiny_bert, root / "cache", epochs=epochs)]
