"""data.missing_labels (issue 12): a row with an empty cell in one task's column is an error (default, as
before), dropped, or kept with that task masked (-100) so the other tasks train on it; metrics count only
labelled rows; a label of the subset without rows is a warning."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_data_prepare import ADOPT, RISK, SUBSET, make_config, prepare

from lorakit import Experiment
from lorakit.config import load_config
from lorakit.data import fingerprint_inputs, fingerprint_key
from lorakit.data.labels import MASKED, LabelWarning, encode_labels
from lorakit.errors import DataError
from lorakit.testing import synthetic_frame


def holes(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Synthetic rows; is_adopt empty in rows 2, 5, 8 (1-based 3, 6, 9), both labels empty in row 11 (12)."""
    frame = synthetic_frame(n, seed=seed)
    frame.loc[[2, 5, 8, 11], "is_adopt"] = None
    frame.loc[11, "risk_level"] = None
    return frame


# ---- encoding ------------------------------------------------------------------------------------


def _label_map():
    from lorakit.data.labels import LabelMap, TaskLabels

    return LabelMap(
        tasks=[
            TaskLabels(name="risk_level", labels=RISK, global_ids=[None] * 3),
            TaskLabels(name="is_adopt", labels=ADOPT, global_ids=[None] * 2),
        ]
    )


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "__row__": [1, 2, 3, 4, 5],
            "risk_level": ["低风险", "高风险", None, None, "中风险"],
            "is_adopt": ["采纳", None, "不采纳", None, "  "],
        }
    )


def test_error_is_the_default_and_names_the_new_option():
    with pytest.raises(DataError) as info:
        encode_labels(_frame(), _label_map(), path="t.csv", drop_unknown=False)
    message = str(info.value)
    assert "column 'risk_level': 2 row(s) have a label outside" in message
    assert "row 3: <empty>, row 4: <empty>" in message
    assert 'data.missing_labels = "drop" or "mask"' in message


def test_drop_drops_every_row_with_an_empty_cell():
    result = encode_labels(_frame(), _label_map(), path="t.csv", drop_unknown=False, missing="drop")
    assert result.keep.tolist() == [True, False, False, False, False]  # a blank cell is empty too
    assert result.dropped_missing == {"risk_level": 2, "is_adopt": 3}
    assert result.masked == {"risk_level": 0, "is_adopt": 0}


def test_mask_keeps_rows_with_some_label_and_masks_the_rest():
    result = encode_labels(_frame(), _label_map(), path="t.csv", drop_unknown=False, missing="mask")
    assert result.keep.tolist() == [True, True, True, False, True]  # row 4 has no label at all
    kept = result.ids[result.keep]
    assert kept.tolist() == [[0, 0], [2, MASKED], [MASKED, 1], [1, MASKED]]
    assert result.masked == {"risk_level": 1, "is_adopt": 2}
    assert result.dropped_missing == {"risk_level": 1, "is_adopt": 1}


def test_mask_never_hides_an_unknown_label():
    frame = _frame()
    frame.loc[0, "risk_level"] = "极高风险"
    with pytest.raises(DataError, match=r"1 row\(s\) have a label outside .*row 1: '极高风险'\)"):
        encode_labels(frame, _label_map(), path="t.csv", drop_unknown=False, missing="mask")


def test_a_single_task_mask_drops_rows_without_their_label():
    from lorakit.data.labels import LabelMap, TaskLabels

    one = LabelMap(tasks=[TaskLabels(name="risk_level", labels=RISK, global_ids=[None] * 3)])
    result = encode_labels(_frame(), one, path="t.csv", drop_unknown=False, missing="mask")
    assert result.keep.tolist() == [True, True, False, False, True]
    assert result.dropped_missing == {"risk_level": 2} and result.masked == {"risk_level": 0}


# ---- preparing -------------------------------------------------------------------------------------


def test_prepare_masks_counts_and_keys_the_cache_on_the_option(tmp_path: Path, tiny_bert: Path):
    holes().to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError, match="column 'risk_level': 1 row"):
        prepare(make_config(tmp_path, tiny_bert))
    masked = prepare(make_config(tmp_path, tiny_bert, missing_labels="mask"))
    assert masked.stats["masked_label"]["raw"] == {"risk_level": 0, "is_adopt": 3}
    assert masked.stats["dropped_missing_label"]["raw"] == {"risk_level": 1, "is_adopt": 1}
    labels = np.concatenate([s.labels for s in masked.splits.values()])
    rows = np.concatenate([s.rows for s in masked.splits.values()])
    assert len(rows) == 39 and 12 not in rows
    assert sorted(rows[labels[:, 1] == MASKED].tolist()) == [3, 6, 9]
    assert (labels[:, 0] >= 0).all()
    dropped = prepare(make_config(tmp_path, tiny_bert, missing_labels="drop"))
    assert sum(len(s) for s in dropped.splits.values()) == 36
    assert dropped.stats["dropped_missing_label"]["raw"] == {"risk_level": 1, "is_adopt": 4}
    keys = {
        fingerprint_key(fingerprint_inputs(make_config(tmp_path, tiny_bert, missing_labels=mode)))
        for mode in ("error", "drop", "mask")
    }
    assert len(keys) == 3
    assert masked.fingerprint in keys and dropped.fingerprint in keys


def test_the_first_task_may_be_masked_too(tmp_path: Path, tiny_bert: Path):
    frame = synthetic_frame(40, seed=4)
    frame.loc[[0, 7, 14, 21], "risk_level"] = None
    frame.to_csv(tmp_path / "train.csv", index=False)
    data = prepare(make_config(tmp_path, tiny_bert, missing_labels="mask"))
    labels = np.concatenate([s.labels for s in data.splits.values()])
    assert (labels[:, 0] == MASKED).sum() == 4 and len(labels) == 40


def test_a_derived_task_masks_empty_sources_only(tmp_path: Path, tiny_bert: Path):
    frame = synthetic_frame(30, seed=5)
    frame.loc[3, "risk_score"] = None
    frame.to_csv(tmp_path / "train.csv", index=False)
    derive = {"band": {"column": "risk_score", "bins": [0, 0.33, 0.66, 1], "labels": RISK}}
    subset = {"is_adopt": ADOPT, "band": RISK}
    data = prepare(
        make_config(tmp_path, tiny_bert, missing_labels="mask", derive=derive, label_subset=subset)
    )
    assert data.stats["masked_label"]["raw"] == {"is_adopt": 0, "band": 1}
    frame.loc[5, "risk_score"] = 1.5  # outside the bins: an unknown label, not a missing one
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError, match=r"column 'band': 1 row\(s\) have a label outside .*row 6: <empty>"):
        prepare(make_config(tmp_path, tiny_bert, missing_labels="mask", derive=derive, label_subset=subset))


def test_a_subset_label_without_rows_is_a_warning(tmp_path: Path, tiny_bert: Path):
    frame = synthetic_frame(60, seed=6)
    frame[frame["risk_level"] != "高风险"].to_csv(tmp_path / "train.csv", index=False)
    cfg = make_config(tmp_path, tiny_bert)
    for _ in range(2):  # built, then a hit: the warning stays true, so it comes again
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prepare(cfg)
        messages = [str(w.message) for w in caught if issubclass(w.category, LabelWarning)]
        assert messages == [
            f"task 'risk_level': label(s) ['高风险'] have no rows in the training split (from "
            f"{tmp_path / 'train.csv'}); the model never learns them"
        ]


# ---- metrics and losses ---------------------------------------------------------------------------


def test_metrics_count_only_labelled_rows(builtin_plugins):
    from lorakit.training.evaluate import compute_metrics

    probs = [np.eye(3)[[0, 1, 2, 0]], np.eye(2)[[0, 1, 1, 0]]]
    labels = np.array([[0, MASKED], [1, MASKED], [2, MASKED], [1, MASKED]])
    result = compute_metrics(probs, labels, ["risk_level", "is_adopt"], [3, 2], ["micro_f1"], builtin_plugins)
    assert result["risk_level_accuracy"] == 0.75
    assert not any(k.startswith("is_adopt_") for k in result)  # no labelled row: no figures
    assert result["avg_f1"] == result["risk_level_f1"]
    labels[:2, 1] = [0, 1]
    result = compute_metrics(probs, labels, ["risk_level", "is_adopt"], [3, 2], [], builtin_plugins)
    assert result["is_adopt_accuracy"] == 1.0


def test_builtin_metrics_leave_out_unlabelled_rows():
    from lorakit.builtin.metrics import accuracy, confusion_matrix

    assert confusion_matrix([0, MASKED, 1], [0, 1, 0], 2).tolist() == [[1, 0], [1, 0]]
    assert accuracy([MASKED, MASKED], [0, 1], 2) == 0.0
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, -1], [0, 0], 2)


@pytest.mark.parametrize("loss", ["cross_entropy", "focal"])
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5]])
def test_a_batch_without_labels_costs_nothing_and_stays_finite(loss: str, weights):
    import torch
    import torch.nn.functional as F

    from lorakit.builtin.losses import build_cross_entropy, build_focal

    fn = (build_cross_entropy if loss == "cross_entropy" else build_focal)(3, class_weights=weights)
    logits = torch.randn(4, 3, requires_grad=True)
    value = fn(logits, torch.full((4,), MASKED))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(logits.grad).all()
    if loss == "cross_entropy":  # partly masked: torch's own mean over the labelled rows
        labels = torch.tensor([0, MASKED, 2, 1])
        w = None if weights is None else torch.tensor(weights)
        expected = F.cross_entropy(logits, labels, weight=w, ignore_index=MASKED, label_smoothing=0.0)
        assert torch.allclose(fn(logits, labels), expected)


# ---- end to end ------------------------------------------------------------------------------------


def test_mask_trains_the_other_tasks_end_to_end(tmp_path: Path, tiny_bert: Path):
    holes(48, seed=7).to_csv(tmp_path / "train.csv", index=False)
    val = synthetic_frame(12, seed=8)
    val["is_adopt"] = None  # no validation row says whether it was adopted
    val.to_csv(tmp_path / "val.csv", index=False)
    cfg = {
        "exp_id": "masked",
        "data": {
            "raw_data_path": str(tmp_path / "train.csv"),
            "val_data_path": str(tmp_path / "val.csv"),
            "cache_dir": str(tmp_path / "cache"),
            "label_subset": SUBSET,
            "missing_labels": "mask",
            "max_len": 24,
        },
        "model": {"arch": str(tiny_bert), "lora": {"rank": 2, "alpha": 4}},
        "train": {"batch_size": 4, "epochs": 1, "lr": 5e-3},
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Experiment(cfg, outputs=tmp_path / "outputs").run(echo=False)
    assert result.status == "completed"
    assert any("task 'is_adopt': no validation row has a label" in str(w.message) for w in caught)
    metrics = json.loads((result.output_dir / "metrics.json").read_text(encoding="utf-8"))
    epoch = metrics["epoch_1"]
    assert np.isfinite(epoch["train_loss"]) and 0 <= epoch["risk_level_f1"] <= 1
    assert "is_adopt_f1" not in epoch and epoch["avg_f1"] == epoch["risk_level_f1"]


def test_keeping_epochs_by_a_task_without_labelled_val_rows_is_refused(tmp_path: Path, tiny_bert: Path):
    from lorakit.errors import ConfigError

    synthetic_frame(30, seed=9).to_csv(tmp_path / "train.csv", index=False)
    val = synthetic_frame(6, seed=10).assign(is_adopt=None)
    val.to_csv(tmp_path / "val.csv", index=False)
    cfg, _ = load_config(
        {
            "exp_id": "m",
            "data": {
                "raw_data_path": "train.csv",
                "val_data_path": "val.csv",
                "cache_dir": "cache",
                "label_subset": SUBSET,
                "missing_labels": "mask",
            },
            "model": {"arch": str(tiny_bert)},
            "train": {"save_strategy": "best_is_adopt_f1"},
        },
        cwd=tmp_path,
    )
    with pytest.raises(
        ConfigError, match=r"train\.save_strategy: 'best_is_adopt_f1' needs 'is_adopt_f1', but no"
    ):
        prepare(cfg)
