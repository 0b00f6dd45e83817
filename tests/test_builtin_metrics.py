"""The built-in metrics, checked against hand-computed confusion-matrix values."""

from __future__ import annotations

import numpy as np
import pytest

import lorakit.builtin.metrics
from lorakit.plugins import Plugins, new_manager

NAMES = ["accuracy", "macro_f1", "micro_f1", "weighted_f1", "macro_precision", "macro_recall"]


@pytest.fixture
def plugins() -> Plugins:
    pm = new_manager(load_entrypoints=False)
    pm.register_plugin(lorakit.builtin.metrics, "metrics", "lorakit", "0")
    return Plugins(pm)


def compute(plugins: Plugins, name: str, y_true: list[int], y_pred: list[int], num_labels: int) -> float:
    spec = plugins.metrics().get(name)
    return spec.compute(np.array(y_true), np.array(y_pred), num_labels)


def test_registers_every_metric_as_higher_is_better(plugins: Plugins) -> None:
    assert sorted(plugins.metrics()) == sorted(NAMES)
    assert all(plugins.metrics().get(n).greater_is_better for n in NAMES)
    assert plugins.metrics().source("macro_f1").distribution == "lorakit"


# y_true 0 0 1 1 2 2 / y_pred 0 1 1 1 2 0:
#   class 0: tp 1 fp 1 fn 1 -> P 1/2 R 1/2 F1 1/2
#   class 1: tp 2 fp 1 fn 0 -> P 2/3 R 1   F1 4/5
#   class 2: tp 1 fp 0 fn 1 -> P 1   R 1/2 F1 2/3
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0]
F1 = [1 / 2, 4 / 5, 2 / 3]
PRECISION = [1 / 2, 2 / 3, 1.0]
RECALL = [1 / 2, 1.0, 1 / 2]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("accuracy", 4 / 6),
        ("micro_f1", 4 / 6),
        ("macro_f1", sum(F1) / 3),
        ("weighted_f1", sum(F1) / 3),  # every class has support 2
        ("macro_precision", sum(PRECISION) / 3),
        ("macro_recall", sum(RECALL) / 3),
    ],
)
def test_three_classes(plugins: Plugins, name: str, expected: float) -> None:
    assert compute(plugins, name, Y_TRUE, Y_PRED, 3) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("accuracy", 4 / 6),
        ("micro_f1", 4 / 6),
        # A fourth class, absent from both arrays, still counts in macro averages with a score of 0
        # (sklearn with labels=range(4), zero_division=0) ...
        ("macro_f1", sum(F1) / 4),
        ("macro_precision", sum(PRECISION) / 4),
        ("macro_recall", sum(RECALL) / 4),
        # ... but has no weight in the support-weighted average.
        ("weighted_f1", sum(F1) / 3),
    ],
)
def test_absent_class_counts_in_macro_average(plugins: Plugins, name: str, expected: float) -> None:
    assert compute(plugins, name, Y_TRUE, Y_PRED, 4) == pytest.approx(expected)


def test_zero_division_is_zero(plugins: Plugins) -> None:
    # Class 1 is never predicted: its precision is 0/0, taken as 0; its recall is 0/1.
    y_true, y_pred = [0, 1], [0, 0]
    assert compute(plugins, "macro_precision", y_true, y_pred, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert compute(plugins, "macro_recall", y_true, y_pred, 2) == pytest.approx((1 + 0) / 2)
    assert compute(plugins, "macro_f1", y_true, y_pred, 2) == pytest.approx((2 / 3 + 0) / 2)
    assert compute(plugins, "weighted_f1", y_true, y_pred, 2) == pytest.approx((2 / 3 * 1 + 0 * 1) / 2)


def test_perfect_and_empty(plugins: Plugins) -> None:
    assert compute(plugins, "macro_f1", [0, 1, 2], [0, 1, 2], 3) == 1.0
    assert compute(plugins, "macro_f1", [0, 0], [0, 0], 3) == pytest.approx(1 / 3)
    for name in NAMES:
        value = compute(plugins, name, [], [], 3)
        assert value == 0.0
        assert isinstance(value, float)


def test_labels_out_of_range_are_a_bug() -> None:
    with pytest.raises(ValueError, match="outside"):
        lorakit.builtin.metrics.accuracy(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="items"):
        lorakit.builtin.metrics.accuracy(np.array([0, 1]), np.array([0]), 3)
