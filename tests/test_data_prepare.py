"""prepare_data end to end: Chinese text and labels, ragged tokenization, splits, sampling, val/test files."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from lorakit.config import load_config
from lorakit.data import fingerprint_inputs, prepare_data, tokenizer_identity
from lorakit.data.splits import sample_indices, stratified_split
from lorakit.errors import DataError
from lorakit.testing import synthetic_frame

RISK = ["低风险", "中风险", "高风险"]
ADOPT = ["采纳", "不采纳"]
SUBSET = {"risk_level": RISK, "is_adopt": ADOPT}


@functools.cache
def _tokenizer(path: str):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path)


def make_config(tmp_path: Path, bert: Path, seed: int = 42, **data):
    base = {"raw_data_path": "train.csv", "cache_dir": "cache", "label_subset": SUBSET}
    merged = {k: v for k, v in {**base, **data}.items() if v is not None}
    cfg, _ = load_config(
        {"exp_id": "t", "seed": seed, "data": merged, "model": {"arch": str(bert)}}, cwd=tmp_path
    )
    return cfg


def prepare(cfg, **kwargs):
    return prepare_data(cfg, tokenizer_loader=lambda: _tokenizer(cfg.model.arch), **kwargs)


def test_chinese_end_to_end_from_jsonl(tmp_path, tiny_bert, label_map_file):
    frame = synthetic_frame(200, seed=3)
    frame.to_json(tmp_path / "train.jsonl", orient="records", lines=True, force_ascii=False)
    cfg = make_config(
        tmp_path, tiny_bert, raw_data_path="train.jsonl", global_label_map=str(label_map_file), test_ratio=0.1
    )
    data = prepare(cfg)
    assert not data.hit and list(data.splits) == ["train", "val", "test"]
    assert data.stats["split_sizes"] == {"train": 160, "val": 20, "test": 20}
    assert data.label_map.to_json() == {
        "task_type": "double_cls",
        "tasks": {
            "risk_level": {"labels": RISK, "global_ids": [0, 1, 2]},
            "is_adopt": {"labels": ADOPT, "global_ids": [3, 4]},
        },
    }
    tokenizer = _tokenizer(str(tiny_bert))
    all_rows = np.concatenate([s.rows for s in data.splits.values()])
    assert sorted(all_rows.tolist()) == list(range(1, 201))  # every row once
    for split in data.splits.values():
        assert split.ids.dtype == np.int32 and split.offsets.dtype == np.int64
        assert split.labels.dtype == np.int64 and split.rows.dtype == np.int64
        assert split.labels.shape == (len(split), 2) and len(split.offsets) == len(split) + 1
        for i in range(0, len(split), 7):
            source = frame.iloc[split.rows[i] - 1]
            assert split.row(i).tolist() == tokenizer(source["text"])["input_ids"]
            assert RISK[split.labels[i, 0]] == source["risk_level"]
            assert ADOPT[split.labels[i, 1]] == source["is_adopt"]
    # Every JSON lorakit writes keeps the Chinese labels readable.
    meta_text = (data.cache_path / "meta.json").read_text(encoding="utf-8")
    assert "低风险" in meta_text and "不采纳" in meta_text and "\\u" not in meta_text
    assert json.loads(meta_text)["label_map"] == data.label_map.to_json()


def test_truncation_at_max_len_without_padding(tmp_path, tiny_bert):
    synthetic_frame(50).to_csv(tmp_path / "train.csv", index=False)
    data = prepare(make_config(tmp_path, tiny_bert, max_len=8))
    lengths = np.concatenate([s.lengths() for s in data.splits.values()])
    assert lengths.max() == 8 and (lengths >= 2).all()
    assert sum(data.stats["truncated_rows"].values()) == int((lengths == 8).sum()) > 0
    first = data.splits["train"].row(0).tolist()
    cls_id, sep_id = _tokenizer(str(tiny_bert)).cls_token_id, _tokenizer(str(tiny_bert)).sep_token_id
    assert first[0] == cls_id and first[-1] == sep_id


def test_a_hit_is_memory_mapped_and_needs_no_tokenizer(tmp_path, tiny_bert):
    synthetic_frame(80).to_csv(tmp_path / "train.csv", index=False)
    cfg = make_config(tmp_path, tiny_bert)
    built = prepare(cfg)

    def no_tokenizer():
        raise AssertionError("a hit must not load the tokenizer")

    loaded = prepare_data(cfg, tokenizer_loader=no_tokenizer)
    assert loaded.hit and loaded.fingerprint == built.fingerprint and loaded.cache_path == built.cache_path
    assert loaded.label_map == built.label_map and loaded.stats == built.stats
    for name, split in built.splits.items():
        other = loaded.splits[name]
        assert isinstance(other.ids, np.memmap)
        for array in ("ids", "offsets", "labels", "rows"):
            np.testing.assert_array_equal(getattr(split, array), getattr(other, array))


def test_stratified_split_is_deterministic_per_seed_and_keeps_every_class_in_train():
    strata = np.array([0] * 50 + [1] * 30 + [2] * 7 + [3] * 2 + [4] * 1)
    a = stratified_split(strata, val_ratio=0.2, test_ratio=0.1, seed=1)
    b = stratified_split(strata, val_ratio=0.2, test_ratio=0.1, seed=1)
    c = stratified_split(strata, val_ratio=0.2, test_ratio=0.1, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["val"], c["val"])
    assert (len(a["val"]), len(a["test"])) == (18, 9)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(len(strata)))
    assert set(strata[a["train"]].tolist()) == {0, 1, 2, 3, 4}
    assert np.bincount(strata[a["val"]], minlength=5)[:2].tolist() == [10, 6]  # proportional


def test_val_split_depends_on_the_seed_through_prepare(tmp_path, tiny_bert):
    synthetic_frame(100).to_csv(tmp_path / "train.csv", index=False)
    one = prepare(make_config(tmp_path, tiny_bert, seed=1))
    again = prepare(make_config(tmp_path, tiny_bert, seed=1))
    other = prepare(make_config(tmp_path, tiny_bert, seed=2))
    assert again.hit and np.array_equal(one.splits["val"].rows, again.splits["val"].rows)
    assert not other.hit and not np.array_equal(one.splits["val"].rows, other.splits["val"].rows)
    # Stratified on the first task: each risk level is in val in proportion.
    val_counts = np.bincount(one.splits["val"].labels[:, 0], minlength=3)
    assert (val_counts >= 2).all() and val_counts.sum() == 10


def test_max_rows_takes_a_reproducible_sample_before_splitting(tmp_path, tiny_bert):
    synthetic_frame(300).to_csv(tmp_path / "train.csv", index=False)
    a = prepare(make_config(tmp_path, tiny_bert, max_rows=100, sample_seed=5))
    b = prepare(make_config(tmp_path, tiny_bert, max_rows=100, sample_seed=6))
    assert a.stats["sampled"] == {"from": 300, "rows": 100, "seed": 5}
    assert sum(len(s) for s in a.splits.values()) == 100
    rows_a = sorted(np.concatenate([s.rows for s in a.splits.values()]).tolist())
    rows_b = sorted(np.concatenate([s.rows for s in b.splits.values()]).tolist())
    assert rows_a != rows_b
    assert sample_indices(300, 100, 5).tolist() == sorted(rows - 1 for rows in rows_a)
    assert sample_indices(50, 100, 5).tolist() == list(range(50))


def test_val_and_test_files(tmp_path, tiny_bert):
    synthetic_frame(120, seed=1).to_csv(tmp_path / "train.csv", index=False)
    synthetic_frame(30, seed=2).to_csv(tmp_path / "val.csv", index=False)
    synthetic_frame(20, seed=3).to_csv(tmp_path / "test.csv", index=False)
    cfg = make_config(tmp_path, tiny_bert, val_data_path="val.csv", test_data_path="test.csv")
    data = prepare(cfg)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 120, "val": 30, "test": 20}
    assert data.splits["val"].rows.tolist() == list(range(1, 31))
    inputs = fingerprint_inputs(cfg)
    assert inputs["split"] == {"val_ratio": None, "test_ratio": None, "seed": None}  # no ratio split: no seed
    bad = synthetic_frame(30, seed=2)
    bad.loc[7, "is_adopt"] = "待定"
    bad.to_csv(tmp_path / "val.csv", index=False)
    with pytest.raises(DataError, match=r"val\.csv: column 'is_adopt': 1 row\(s\) .*row 8: '待定'"):
        prepare(cfg)


def test_too_few_rows_for_a_val_split(tmp_path, tiny_bert):
    synthetic_frame(1).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError, match=r"too few rows \(1\) for a val split"):
        prepare(make_config(tmp_path, tiny_bert))


def test_tokenizer_identity(tiny_bert, tmp_path):
    assert tokenizer_identity("bert-base-chinese") == {"name": "bert-base-chinese", "revision": "main"}
    identity = tokenizer_identity(str(tiny_bert))
    assert "tokenizer.json" in identity["files"] or "vocab.txt" in identity["files"]
    assert all(len(sha) == 64 for sha in identity["files"].values())
    assert "model.safetensors" not in identity["files"]  # weights do not change tokenization
