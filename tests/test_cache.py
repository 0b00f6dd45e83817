"""The fingerprint cache: content (not path or mtime) decides, every input that changes the arrays is in
the key, damaged entries are rebuilt, and concurrent builders leave one valid entry."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lorakit.config import load_config
from lorakit.data import CacheWarning, fingerprint_inputs, prepare_data
from lorakit.data.cache import read_entry
from lorakit.data.why import explain
from lorakit.testing import synthetic_frame, tiny_vocab

RISK = ["低风险", "中风险", "高风险"]
SUBSET = {"risk_level": RISK, "is_adopt": ["采纳", "不采纳"]}


@functools.cache
def _tokenizer(path: str):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path)


def make_config(tmp_path: Path, arch: Path, **data):
    base = {"raw_data_path": "train.csv", "cache_dir": "cache", "label_subset": SUBSET}
    cfg, _ = load_config(
        {"exp_id": "t", "data": {**base, **data}, "model": {"arch": str(arch)}}, cwd=tmp_path
    )
    return cfg


def prepare(cfg):
    return prepare_data(cfg, tokenizer_loader=lambda: _tokenizer(cfg.model.arch))


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def digest(data) -> str:
    h = hashlib.sha256()
    for split in data.splits.values():
        for array in (split.ids, split.offsets, split.labels, split.rows):
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    synthetic_frame(120, seed=7).to_csv(path, index=False)
    return path


def test_one_changed_cell_with_size_and_mtime_restored_is_a_miss(tmp_path, tiny_bert, corpus):
    cfg = make_config(tmp_path, tiny_bert)
    first = prepare(cfg)
    before = corpus.stat()
    text = corpus.read_text(encoding="utf-8")
    # Same byte length in UTF-8 (both 6 bytes), so size and mtime cannot tell the files apart.
    changed = (
        text.replace("这笔贷款", "这份合同", 1)
        if "这笔贷款" in text
        else text.replace("这份合同", "这笔贷款", 1)
    )
    assert changed != text and len(changed.encode()) == len(text.encode())
    corpus.write_text(changed, encoding="utf-8")
    os.utime(corpus, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert corpus.stat().st_size == before.st_size and corpus.stat().st_mtime_ns == before.st_mtime_ns
    assert explain(cfg).lines()[1:] == ["  raw file content"]
    second = prepare(cfg)
    assert not second.hit and second.fingerprint != first.fingerprint


def test_the_same_bytes_under_another_path_hit(tmp_path, tiny_bert, corpus):
    first = prepare(make_config(tmp_path, tiny_bert))
    elsewhere = tmp_path / "elsewhere" / "copy_of_train.csv"
    elsewhere.parent.mkdir()
    shutil.copyfile(corpus, elsewhere)
    again = prepare(make_config(tmp_path, tiny_bert, raw_data_path=str(elsewhere)))
    assert again.hit and again.fingerprint == first.fingerprint


def _other_tokenizer(directory: Path) -> Path:
    """A tokenizer like the tiny BERT's but with a smaller vocabulary (some characters become [UNK])."""
    import transformers

    vocab = [t for t in tiny_vocab() if t not in "贷款合同"]
    directory.mkdir()
    if int(transformers.__version__.split(".")[0]) >= 5:
        tokenizer = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    else:  # pragma: no cover - transformers 4
        (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    tokenizer.save_pretrained(directory)
    return directory


def test_tokenizer_max_len_and_label_order_are_in_the_key(tmp_path, tiny_bert, corpus):
    base = prepare(make_config(tmp_path, tiny_bert))
    other = make_config(tmp_path, _other_tokenizer(tmp_path / "other-tokenizer"))
    assert explain(other).differences[0].startswith("tokenizer (")
    with_other = prepare(other)
    assert not with_other.hit and digest(with_other) != digest(base)

    shorter = make_config(tmp_path, tiny_bert, max_len=16)
    assert explain(shorter).differences == ["max_len 128 → 16"]
    assert not prepare(shorter).hit

    reversed_labels = make_config(
        tmp_path, tiny_bert, label_subset={"risk_level": RISK[::-1], **{"is_adopt": ["采纳", "不采纳"]}}
    )
    assert explain(reversed_labels).differences == [
        'label order of risk_level ["低风险", "中风险", "高风险"] → ["高风险", "中风险", "低风险"]'
    ]
    flipped = prepare(reversed_labels)
    assert not flipped.hit
    np.testing.assert_array_equal(flipped.splits["train"].labels[:, 0], 2 - base.splits["train"].labels[:, 0])

    # A copy of the tokenizer files elsewhere is the same tokenizer.
    copy = tmp_path / "bert-copy"
    shutil.copytree(tiny_bert, copy)
    assert prepare(make_config(tmp_path, copy)).hit


def test_inputs_that_cannot_change_the_arrays_do_not_miss(tmp_path, tiny_bert, corpus):
    cfg = make_config(tmp_path, tiny_bert)
    prepare(cfg)
    # sample_seed without max_rows, and the config's own description, change nothing.
    assert prepare(make_config(tmp_path, tiny_bert, sample_seed=99)).hit
    assert fingerprint_inputs(cfg)["sampling"] == {"max_rows": None, "sample_seed": None}


@pytest.mark.parametrize("damage", ["array", "meta", "missing"])
def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path, tiny_bert, corpus, damage):
    cfg = make_config(tmp_path, tiny_bert)
    good = prepare(cfg)
    target = good.cache_path / ("train.ids.npy" if damage != "meta" else "meta.json")
    if damage == "array":
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF  # one flipped byte in the token ids, same size
        target.write_bytes(bytes(data))
    elif damage == "meta":
        target.write_text("{not json", encoding="utf-8")
    else:
        target.unlink()
    assert explain(cfg).damaged
    with pytest.warns(CacheWarning, match="damaged"):
        rebuilt = prepare(cfg)
    assert not rebuilt.hit and digest(rebuilt) == digest(good)
    assert read_entry(rebuilt.cache_path, rebuilt.fingerprint) is not None
    assert prepare(cfg).hit
    assert entries(tmp_path / "cache") == [good.cache_path.name]  # no temp or trash folders left


def test_a_concurrent_builder_that_finishes_first_wins(tmp_path, tiny_bert, corpus):
    cfg = make_config(tmp_path, tiny_bert)
    inner = []

    def racing_loader():
        # Called on the outer call's miss, before it writes: another builder finishes the same key now.
        inner.append(prepare(cfg))
        return _tokenizer(str(tiny_bert))

    outer = prepare_data(cfg, tokenizer_loader=racing_loader)
    assert not inner[0].hit and not outer.hit
    assert outer.cache_path == inner[0].cache_path and digest(outer) == digest(inner[0])
    assert entries(tmp_path / "cache") == [outer.cache_path.name]
    assert read_entry(outer.cache_path, outer.fingerprint) is not None


WORKER = textwrap.dedent(
    """
    import hashlib, json, sys, time
    from pathlib import Path

    import numpy as np
    import transformers

    from lorakit.config import load_config
    from lorakit.data import prepare_data

    config, barrier, me = sys.argv[1:]
    cfg, _ = load_config(config)

    def loader():
        # Both processes get here only on a miss; wait until both have, so that both build and race.
        Path(barrier, me).touch()
        deadline = time.time() + 60
        while len(list(Path(barrier).iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.01)
        return transformers.AutoTokenizer.from_pretrained(cfg.model.arch)

    data = prepare_data(cfg, tokenizer_loader=loader)
    h = hashlib.sha256()
    for name, split in data.splits.items():
        for array in (split.ids, split.offsets, split.labels, split.rows):
            h.update(np.ascontiguousarray(array).tobytes())
    print(json.dumps({"hit": data.hit, "key": data.fingerprint, "digest": h.hexdigest()}))
    """
)


def test_two_processes_building_the_same_key_leave_one_valid_entry(tmp_path, tiny_bert, corpus):
    config = tmp_path / "exp.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            exp_id = "race"
            [data]
            raw_data_path = "train.csv"
            cache_dir = "cache"
            label_subset = {json.dumps(SUBSET, ensure_ascii=False).replace('":', '" =')}
            [model]
            arch = "{tiny_bert}"
            """
        ),
        encoding="utf-8",
    )
    (tmp_path / "worker.py").write_text(WORKER, encoding="utf-8")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "worker.py"), str(config), str(barrier), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Warning" not in err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["hit"] for r in results] == [False, False]  # both built
    assert results[0]["key"] == results[1]["key"] and results[0]["digest"] == results[1]["digest"]
    root = tmp_path / "cache"
    assert entries(root) == [results[0]["key"][:20]]
    cfg, _ = load_config(config)
    loaded = prepare_data(cfg, tokenizer_loader=lambda: None)
    assert loaded.hit and digest(loaded) == results[0]["digest"]
