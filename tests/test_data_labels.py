"""Label maps and label validation: the global map as the one truth, contiguous ids per task, unknown
labels and empty texts as one-line errors (or dropped and counted), derived label columns."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
import pytest

from lorakit.config import load_config
from lorakit.data import LabelMap, TaskLabels, build_label_map, prepare_data
from lorakit.errors import ConfigError, DataError
from lorakit.fsutil import dumps_json
from lorakit.testing import synthetic_frame

RISK = ["低风险", "中风险", "高风险"]
ADOPT = ["采纳", "不采纳"]


@functools.cache
def _tokenizer(path: str):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path)


def make_config(tmp_path: Path, bert: Path, **data):
    """A config dict with the given [data] keys (None removes a key); paths resolve against tmp_path."""
    base = {"raw_data_path": "train.csv", "cache_dir": "cache", "label_subset": {"risk_level": RISK}}
    merged = {k: v for k, v in {**base, **data}.items() if v is not None}
    cfg, _ = load_config({"exp_id": "t", "data": merged, "model": {"arch": str(bert)}}, cwd=tmp_path)
    return cfg


def prepare(cfg):
    return prepare_data(cfg, tokenizer_loader=lambda: _tokenizer(cfg.model.arch))


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---- label maps -------------------------------------------------------------------------------


def test_multi_task_label_map_in_subset_order_with_global_ids(tmp_path, tiny_bert, label_map_file):
    cfg = make_config(
        tmp_path,
        tiny_bert,
        global_label_map=str(label_map_file),
        label_subset={"is_adopt": ["不采纳", "采纳"], "risk_level": ["高风险", "低风险", "中风险"]},
    )
    label_map = build_label_map(cfg)
    assert label_map.names == ["is_adopt", "risk_level"]  # table order
    assert label_map.task("is_adopt") == TaskLabels(
        name="is_adopt", labels=["不采纳", "采纳"], global_ids=[4, 3]
    )
    assert label_map.task("risk_level").global_ids == [2, 0, 1]
    data = label_map.to_json()
    assert data["task_type"] == "double_cls"
    assert LabelMap.from_json(json.loads(dumps_json(data))) == label_map
    assert "不采纳" in dumps_json(data) and "\\u" not in dumps_json(data)
    with pytest.raises(KeyError, match="tasks"):
        label_map.task("channel")


def test_single_label_without_subset_takes_the_global_map_in_id_order(tmp_path, tiny_bert):
    path = tmp_path / "global.json"
    path.write_text(json.dumps({"高风险": 7, "低风险": 2, "中风险": 5}, ensure_ascii=False), encoding="utf-8")
    cfg = make_config(
        tmp_path, tiny_bert, label_subset=None, label_column="risk_level", global_label_map=str(path)
    )
    task = build_label_map(cfg).tasks[0]
    assert (task.name, task.labels, task.global_ids) == (
        "risk_level",
        ["低风险", "中风险", "高风险"],
        [2, 5, 7],
    )
    assert build_label_map(cfg).task_type == "single_cls"


def test_without_subset_or_global_map_the_labels_come_from_the_data(tmp_path, tiny_bert):
    synthetic_frame(60).to_csv(tmp_path / "train.csv", index=False)
    cfg = make_config(tmp_path, tiny_bert, label_subset=None, label_column="is_adopt")
    with pytest.raises(ConfigError, match="come from the data"):
        build_label_map(cfg)
    data = prepare(cfg)
    assert data.label_map.tasks == [
        TaskLabels(name="is_adopt", labels=sorted(ADOPT), global_ids=[None, None])
    ]


def test_subset_label_outside_the_global_map_is_a_config_error(tmp_path, tiny_bert, label_map_file):
    with pytest.raises(ConfigError) as excinfo:
        make_config(
            tmp_path, tiny_bert, global_label_map=str(label_map_file), label_subset=["低风险", "极高风险"]
        )
    assert excinfo.value.lines() == [
        f"data.label_subset: labels ['极高风险'] are not in {label_map_file} (<dict>)"
    ]


# ---- validation -------------------------------------------------------------------------------


def test_unknown_labels_are_one_error_naming_file_column_rows_values_and_fix(tmp_path, tiny_bert):
    frame = synthetic_frame(30)
    frame.loc[[3, 9], "risk_level"] = ["极高风险", None]
    frame.to_csv(tmp_path / "train.csv", index=False)
    cfg = make_config(tmp_path, tiny_bert)
    with pytest.raises(DataError) as excinfo:
        prepare(cfg)
    message = one_line_error(excinfo)
    assert message.startswith(f"{tmp_path / 'train.csv'}: column 'risk_level': 2 row(s)")
    assert "row 4: '极高风险'" in message and "row 10: <empty>" in message
    assert "data.label_subset" in message and "data.drop_unknown_labels = true" in message

    dropped = prepare(make_config(tmp_path, tiny_bert, drop_unknown_labels=True))
    assert dropped.stats["dropped_unknown_label"]["raw"] == {"risk_level": 2}
    assert sum(dropped.stats["split_sizes"].values()) == 28
    kept_rows = {int(r) for s in dropped.splits.values() for r in s.rows}
    assert 4 not in kept_rows and 10 not in kept_rows and 5 in kept_rows


def test_unknown_label_error_quotes_at_most_five_rows(tmp_path, tiny_bert):
    frame = synthetic_frame(30)
    frame.loc[:7, "risk_level"] = "未知"
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path, tiny_bert))
    message = one_line_error(excinfo)
    assert "8 row(s)" in message and "row 5: '未知', ..." in message and "row 6" not in message


def test_empty_texts_are_an_error_unless_dropped(tmp_path, tiny_bert):
    frame = synthetic_frame(30)
    frame.loc[2, "text"] = None
    frame.loc[5, "text"] = "   "
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path, tiny_bert))
    message = one_line_error(excinfo)
    assert "column 'text': 2 row(s) have empty text (rows 3, 6)" in message
    assert "data.drop_empty_text = true" in message
    data = prepare(make_config(tmp_path, tiny_bert, drop_empty_text=True))
    assert data.stats["dropped_empty_text"] == {"raw": 2}


def test_missing_columns_list_the_columns_that_exist(tmp_path, tiny_bert):
    synthetic_frame(20).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError) as excinfo:
        prepare(make_config(tmp_path, tiny_bert, text_column="content"))
    message = one_line_error(excinfo)
    assert f"{tmp_path / 'train.csv'}: no column 'content' (data.text_column)" in message
    assert "'text', 'risk_level', 'is_adopt', 'risk_score', 'label'" in message and "__row__" not in message
    with pytest.raises(DataError, match=r"no column 'channel' \(data.label_subset\)"):
        prepare(
            make_config(tmp_path, tiny_bert, label_subset={"risk_level": RISK, "channel": ["线上", "线下"]})
        )


def test_digit_labels_in_a_csv_match_string_labels(tmp_path, tiny_bert):
    frame = synthetic_frame(40)
    frame["grade"] = frame["risk_level"].map({"低风险": 0, "中风险": 1, "高风险": 2})
    frame.to_csv(tmp_path / "train.csv", index=False)
    data = prepare(make_config(tmp_path, tiny_bert, label_subset={"grade": ["2", "1", "0"]}))
    train = data.splits["train"]
    expected = frame["grade"].map({2: 0, 1: 1, 0: 2}).to_numpy()[train.rows - 1]
    assert (train.labels[:, 0] == expected).all()
    # An empty cell makes pandas read the column as float: "1.0" must still be the label "1".
    frame.loc[0, "grade"] = None
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError, match=r"1 row\(s\) .* \(row 1: <empty>\)"):
        prepare(make_config(tmp_path, tiny_bert, label_subset={"grade": ["2", "1", "0"]}))


# ---- derived label columns --------------------------------------------------------------------

RISK_RULE = {"column": "risk_score", "bins": [0, 0.33, 0.66, 1], "labels": RISK}


def _scores(tmp_path: Path, scores: list[float]) -> None:
    texts = ["信用记录良好", "收入有波动", "多次逾期未还", "资料齐全", "涉及诉讼纠纷", "还款按时"]
    frame = pd.DataFrame({"text": [texts[i % len(texts)] for i in range(len(scores))], "risk_score": scores})
    frame.to_csv(tmp_path / "train.csv", index=False)


@pytest.mark.parametrize(
    ("right", "expected"),
    [
        # (a, b] bins; include_lowest puts the first edge (0) in the first bin.
        (True, ["低风险", "低风险", "中风险", "中风险", "高风险", "高风险"]),
        # [a, b) bins; the last edge (1) is in no bin.
        (False, ["低风险", "中风险", "中风险", "高风险", "高风险", None]),
    ],
)
def test_derive_bins_follow_pandas_cut_edges(tmp_path, tiny_bert, right, expected):
    _scores(tmp_path, [0, 0.33, 0.5, 0.66, 0.9, 1.0])
    cfg = make_config(
        tmp_path,
        tiny_bert,
        label_subset=None,
        label_column="risk_level",
        derive={"risk_level": {**RISK_RULE, "right": right}},
        drop_unknown_labels=True,
        val_ratio=0.2,
    )
    data = prepare(cfg)
    assert data.label_map.task("risk_level").labels == RISK  # rule order, not sorted
    got = {}
    for split in data.splits.values():
        for row, label in zip(split.rows, split.labels[:, 0], strict=True):
            got[int(row)] = RISK[label]
    assert [got.get(row) for row in range(1, 7)] == expected


def test_derived_column_out_of_range_is_an_unknown_label(tmp_path, tiny_bert):
    _scores(tmp_path, [0.1, 0.5, 1.2, 0.9, -0.1, 0.2])
    cfg = make_config(
        tmp_path, tiny_bert, label_subset={"risk_level": RISK}, derive={"risk_level": RISK_RULE}
    )
    with pytest.raises(DataError) as excinfo:
        prepare(cfg)
    message = one_line_error(excinfo)
    assert "column 'risk_level': 2 row(s)" in message and "row 3: <empty>, row 5: <empty>" in message
    assert "their 'risk_score' values 1.2, -0.1 are empty or outside data.derive.risk_level.bins" in message
    assert "widen data.derive.risk_level.bins" in message


def test_derived_column_can_be_a_second_task_and_must_be_numeric(tmp_path, tiny_bert):
    synthetic_frame(60).to_csv(tmp_path / "train.csv", index=False)
    rule = {"column": "risk_score", "bins": [0, 0.5, 1], "labels": ["low", "high"]}
    cfg = make_config(
        tmp_path, tiny_bert, label_subset={"is_adopt": ADOPT, "band": ["low", "high"]}, derive={"band": rule}
    )
    data = prepare(cfg)
    assert data.label_map.names == ["is_adopt", "band"] and data.splits["train"].labels.shape[1] == 2
    frame = synthetic_frame(60)
    frame["risk_score"] = frame["risk_score"].astype(object)
    frame.loc[4, "risk_score"] = "abc"
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(
        DataError, match=r"column 'risk_score' \(data.derive.band.column\) must be numeric.*row 5: 'abc'"
    ):
        prepare(cfg)
