"""``lorakit cache`` through the real command: build, why, ls, clear; bad inputs are one line, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lorakit.testing import synthetic_frame

RISK = '["低风险", "中风险", "高风险"]'


def write_config(directory: Path, arch: Path, data: str = "", name: str = "exp.toml") -> Path:
    path = directory / name
    path.write_text(
        textwrap.dedent(
            """\
            # lorakit cache build {name}
            exp_id = "cli"
            [data]
            raw_data_path = "train.csv"
            cache_dir = "cache"
            label_column = "risk_level"
            label_subset = {risk}
            {data}
            [model]
            arch = "{arch}"
            """
        ).format(name=name, risk=RISK, data=data, arch=arch),
        encoding="utf-8",
    )
    return path


def start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    return subprocess.Popen(
        [sys.executable, "-m", "lorakit", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = start(*args, cwd=cwd)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_bad_inputs_are_one_line_with_exit_code_2(tmp_path, tiny_bert, label_map_file):
    cases: dict[str, tuple[str, bytes | None, list[str]]] = {}
    good = synthetic_frame(30).to_csv(index=False).encode("utf-8")
    lines = good.split(b"\n")

    cases["missing_column"] = (
        'text_column = "content"',
        good,
        ["train.csv", "no column 'content' (data.text_column)", "'text', 'risk_level'"],
    )
    unknown = b"\n".join([*lines[:4], lines[4].replace("风险".encode(), "危险".encode()), *lines[5:]])
    cases["unknown_label"] = (
        "",
        unknown,
        ["train.csv", "column 'risk_level'", "row 4:", "data.drop_unknown_labels = true"],
    )
    bad_bytes = b"\n".join([*lines[:3], lines[3][:10] + b"\xff\xfe" + lines[3][12:], *lines[4:]])
    cases["non_utf8"] = (
        "",
        bad_bytes,
        ["train.csv", "not valid utf-8 at byte", "(row 3)", 'data.encoding_errors = "replace"'],
    )
    cases["empty_file"] = ("", b"", ["train.csv", "has no rows"])
    cases["not_in_global_map"] = (
        f'global_label_map = "{label_map_file}"\nlabel_subset = ["低风险", "极高风险"]',
        good,
        ["data.label_subset", "极高风险", "global_label_map.json", "exp.toml"],
    )
    procs = {}
    for name, (data, content, _expected) in cases.items():
        directory = tmp_path / name
        directory.mkdir()
        (directory / "train.csv").write_bytes(content)
        text = write_config(directory, tiny_bert, data).read_text(encoding="utf-8")
        if name == "not_in_global_map":  # a second label_subset key would be a TOML error, not ours
            text = text.replace(f"label_subset = {RISK}\n", "")
            (directory / "exp.toml").write_text(text, encoding="utf-8")
        procs[name] = start("cache", "build", "exp.toml", cwd=directory)
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, out, err)
        assert err.count("\n") == 1 and err.startswith("Error: "), (name, err)
        for fragment in cases[name][2]:
            assert fragment in err, (name, fragment, err)
        assert not (tmp_path / name / "cache").exists() or not any((tmp_path / name / "cache").iterdir())


def test_build_why_ls_clear(tmp_path, tiny_bert):
    synthetic_frame(60).to_csv(tmp_path / "train.csv", index=False)
    write_config(tmp_path, tiny_bert)
    empty = run("cache", "why", "exp.toml", cwd=tmp_path)
    assert empty.returncode == 0 and empty.stdout.startswith("MISS ") and "no cache entries" in empty.stdout

    built = run("cache", "build", "exp.toml", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("MISS (built) ") and "train 54, val 6 rows" in built.stdout
    again = run("cache", "build", "exp.toml", cwd=tmp_path)
    assert again.stdout.startswith("HIT ")
    assert run("cache", "why", "exp.toml", cwd=tmp_path).stdout.startswith("HIT ")

    why = run(
        "cache", "why", "exp.toml", "--set", "data.max_len=64", "--set", "data.val_ratio=0.2", cwd=tmp_path
    )
    assert why.returncode == 0
    assert why.stdout.splitlines()[1:] == ["  max_len 128 → 64", "  val_ratio 0.1 → 0.2"]
    as_json = json.loads(run("cache", "why", "exp.toml", "--json", cwd=tmp_path).stdout)
    assert as_json["hit"] and as_json["inputs"]["tasks"][0]["labels"] == ["低风险", "中风险", "高风险"]

    listing = run("cache", "ls", "--cache-dir", "cache", "--json", cwd=tmp_path)
    entries = json.loads(listing.stdout)["entries"]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["rows"] == {"train": 54, "val": 6} and entry["tokenizer"] == str(tiny_bert)
    assert entry["sources"] == {"raw": str(tmp_path / "train.csv")} and entry["bytes"] > 0
    table = run("cache", "ls", "--cache-dir", "cache", cwd=tmp_path).stdout
    assert Path(entry["path"]).name in table and "54 / 6 / -" in table and "train.csv" in table

    kept = run("cache", "clear", "--cache-dir", "cache", "--older-than", "1", "--yes", cwd=tmp_path)
    assert kept.returncode == 0 and "nothing to remove" in kept.stdout
    cleared = run("cache", "clear", "--cache-dir", "cache", "--yes", cwd=tmp_path)
    assert cleared.returncode == 0 and cleared.stdout.startswith("removed 1 entry")
    assert list((tmp_path / "cache").iterdir()) == []


def test_damaged_entry_is_reported_by_why_and_rebuilt_by_build(tmp_path, tiny_bert):
    import transformers

    from lorakit.config import load_config
    from lorakit.data import prepare_data

    synthetic_frame(40).to_csv(tmp_path / "train.csv", index=False)
    cfg, _ = load_config(write_config(tmp_path, tiny_bert))
    # Built in-process (a subprocess would spend seconds importing transformers); the CLI rebuilds below.
    prepare_data(cfg, tokenizer_loader=lambda: transformers.AutoTokenizer.from_pretrained(str(tiny_bert)))
    (entry,) = (tmp_path / "cache").iterdir()
    (entry / "val.labels.npy").write_bytes(b"garbage")
    why = run("cache", "why", "exp.toml", cwd=tmp_path)
    assert "damaged (val.labels.npy fails its checksum) and would be rebuilt" in why.stdout
    rebuilt = run("cache", "build", "exp.toml", cwd=tmp_path)
    assert rebuilt.returncode == 0 and rebuilt.stdout.startswith("MISS (built)")
    assert rebuilt.stderr.startswith("Warning: cache entry ") and rebuilt.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [["cache", "ls"], ["cache", "--help"]])
def test_cache_listing_imports_nothing_heavy(tmp_path, command):
    code = (
        "import sys\nfrom lorakit.cli import cli\n"
        f"cli.main(args={command!r}, prog_name='lorakit', standalone_mode=False)\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'transformers', 'torch') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
