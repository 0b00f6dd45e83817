"""The built-in data sources: round trips, decoding errors, empty and malformed files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import lorakit.builtin.sources
from lorakit.errors import DataError
from lorakit.plugins import Plugins, new_manager
from lorakit.specs import ReadOptions

FRAME = pd.DataFrame(
    {
        "text": ["今天天气很好", "这个建议不错，值得采纳", "plain ascii, with a comma", "风险较高"],
        "risk": ["低风险", "中风险", "低风险", "高风险"],
        "decision": ["采纳", "采纳", "不采纳", "不采纳"],
        "score": [1, 2, 3, 4],
    }
)


@pytest.fixture
def plugins() -> Plugins:
    pm = new_manager(load_entrypoints=False)
    pm.register_plugin(lorakit.builtin.sources, "sources", "lorakit", "0")
    return Plugins(pm)


def write(path: Path, fmt: str) -> Path:
    if fmt == "csv":
        FRAME.to_csv(path, index=False)
    elif fmt == "tsv":
        FRAME.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        FRAME.to_json(path, orient="records", lines=True, force_ascii=False)
    elif fmt in ("json", "json-records"):
        FRAME.to_json(path, orient="records", force_ascii=False)
    elif fmt == "json-columns":
        FRAME.to_json(path, orient="columns", force_ascii=False)
    elif fmt == "parquet":
        FRAME.to_parquet(path, index=False)
    return path


def read(plugins: Plugins, path: Path, **options: str) -> pd.DataFrame:
    return plugins.data_source_for(str(path)).read(path, ReadOptions(**options))


def test_suffixes_pick_the_source(plugins: Plugins) -> None:
    assert sorted(plugins.data_sources()) == ["csv", "json", "jsonl", "parquet", "tsv"]
    assert plugins.data_source_for("x.jsonl").name == "jsonl"
    assert plugins.data_source_for("x.json").name == "json"
    assert plugins.data_source_for("X.NDJSON").name == "jsonl"
    assert plugins.data_source_for("data/x.tab").name == "tsv"
    assert plugins.data_source_for("x.pq").name == "parquet"


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [
        ("csv", ".csv"),
        ("tsv", ".tsv"),
        ("tsv", ".tab"),
        ("jsonl", ".jsonl"),
        ("jsonl", ".ndjson"),
        ("json-records", ".json"),
        ("json-columns", ".json"),
        ("parquet", ".parquet"),
        ("parquet", ".pq"),
    ],
)
def test_round_trip_with_chinese_text_and_labels(
    plugins: Plugins, tmp_path: Path, fmt: str, suffix: str
) -> None:
    path = write(tmp_path / f"data{suffix}", fmt)
    frame = read(plugins, path)
    pd.testing.assert_frame_equal(frame, FRAME)
    assert pd.api.types.is_integer_dtype(frame["score"])  # numeric columns stay numeric


def test_utf8_bom_is_stripped(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    FRAME.to_csv(path, index=False, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert list(read(plugins, path).columns) == list(FRAME.columns)


def test_only_empty_cells_are_missing(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "na.csv"
    path.write_text("text,label\n你好,采纳\n,不采纳\nNA,None\n", encoding="utf-8")
    frame = read(plugins, path)
    assert frame["text"].isna().tolist() == [False, True, False]
    assert frame["label"].tolist() == ["采纳", "不采纳", "None"]  # a label called "None" is a label


def invalid_in_row_3(path: Path) -> tuple[Path, int]:
    good = "text,label\n第一行,采纳\n第二行,不采纳\n".encode()
    bad = "第三".encode() + b"\xff\xfe" + ",采纳\n".encode() + "第四行,不采纳\n".encode()
    path.write_bytes(good + bad)
    return path, len(good) + len("第三".encode())


def test_invalid_utf8_names_byte_and_row(plugins: Plugins, tmp_path: Path) -> None:
    path, offset = invalid_in_row_3(tmp_path / "bad.csv")
    with pytest.raises(DataError) as info:
        read(plugins, path)
    message = str(info.value)
    assert message == (
        f"{path}: not valid utf-8 at byte {offset} (row 3); "
        'set data.encoding or data.encoding_errors = "replace" to read it anyway'
    )
    assert "\n" not in message


def test_invalid_utf8_in_jsonl_names_the_line(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": "好", "label": "采纳"}, ensure_ascii=False).encode() for _ in range(3)]
    lines.insert(1, b'{"text": "\xc3(", "label": "x"}')
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"at byte \d+ \(row 2\); .*encoding_errors"):
        read(plugins, path)


def test_replace_reads_undecodable_bytes_as_replacement_characters(plugins: Plugins, tmp_path: Path) -> None:
    path, _ = invalid_in_row_3(tmp_path / "bad.csv")
    frame = read(plugins, path, encoding_errors="replace")
    assert frame["text"].tolist() == ["第一行", "第二行", "第三\ufffd\ufffd", "第四行"]
    assert read(plugins, path, encoding_errors="ignore")["text"][2] == "第三"


def test_latin1_encoding(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "latin.tsv"
    path.write_bytes("text\tlabel\ncafé crème\toui\nnaïve\tnon\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid utf-8"):
        read(plugins, path)
    assert read(plugins, path, encoding="latin-1")["text"].tolist() == ["café crème", "naïve"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.csv", b""),
        ("header.csv", b"text,label\n"),
        ("blank.csv", b"\n\n"),
        ("header.tsv", b"text\tlabel\r\n"),
        ("empty.jsonl", b""),
        ("blank.jsonl", b"\n  \n"),
        ("empty.json", b"[]"),
        ("empty-object.json", b"{}"),
        ("empty.parquet", b""),
    ],
)
def test_empty_files_have_no_rows(plugins: Plugins, tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=r": the file has no rows$"):
        read(plugins, path)


def test_header_only_parquet_has_no_rows(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "none.parquet"
    FRAME.iloc[:0].to_parquet(path)
    with pytest.raises(DataError, match="no rows"):
        read(plugins, path)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_missing_file(plugins: Plugins, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"missing{suffix}"
    with pytest.raises(DataError) as info:
        read(plugins, path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("ragged.csv", "a,b\n1,2\n3,4,5,6\n", "cannot parse: Error tokenizing data"),
        ("broken.jsonl", '{"a": 1}\n{"a": 2,\n', "line 2: invalid JSON"),
        ("list.jsonl", '{"a": 1}\n[1, 2]\n', "line 2: expected a JSON object, got list"),
        ("broken.json", '[{"a": 1},\n {"a": }]', "invalid JSON: Expecting value: line 2"),
        ("scalar.json", "42", "expected a JSON array of records or an object of columns, got int"),
        ("mixed.json", '[{"a": 1}, "x"]', "item 1: expected a JSON object, got str"),
        ("ragged.json", '{"a": [1, 2], "b": [1]}', "the columns have different lengths"),
        ("junk.parquet", "not parquet at all", "not a readable Parquet file"),
    ],
)
def test_malformed_files_are_one_line_data_errors(
    plugins: Plugins, tmp_path: Path, name: str, content: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read(plugins, path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_json_object_of_lists(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "columns.json"
    path.write_text(json.dumps(FRAME.to_dict(orient="list"), ensure_ascii=False), encoding="utf-8")
    pd.testing.assert_frame_equal(read(plugins, path), FRAME)


def test_jsonl_keeps_raw_line_separator_inside_strings(plugins: Plugins, tmp_path: Path) -> None:
    # ensure_ascii=False writes U+2028 raw; it must not split the record.
    path = tmp_path / "sep.jsonl"
    path.write_text(
        json.dumps({"text": "上\u2028下", "label": "采纳"}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    assert read(plugins, path)["text"].tolist() == ["上\u2028下"]


def test_undecodable_header_and_json_positions(plugins: Plugins, tmp_path: Path) -> None:
    header = tmp_path / "header.csv"
    header.write_bytes(b"te\xffxt,label\nx,y\n")
    with pytest.raises(DataError, match=r"at byte 2 \(header\);"):
        read(plugins, header)
    document = tmp_path / "doc.json"
    document.write_bytes(b'[\n{"a": "x"},\n{"a": "\xff"}\n]')
    with pytest.raises(DataError, match=r"at byte 21 \(line 3\);"):
        read(plugins, document)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"encoding": "no-such-codec"}, "unknown encoding 'no-such-codec' (data.encoding)"),
        ({"encoding_errors": "skip"}, "data.encoding_errors must be one of strict, replace, ignore"),
    ],
)
def test_bad_read_options(plugins: Plugins, tmp_path: Path, options: dict[str, str], expected: str) -> None:
    path = write(tmp_path / "data.csv", "csv")
    with pytest.raises(DataError, match=re.escape(expected)):
        read(plugins, path, **options)


def test_a_directory_cannot_be_read(plugins: Plugins, tmp_path: Path) -> None:
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(DataError, match=r"folder\.csv: cannot read: Is a directory$"):
        read(plugins, folder)
