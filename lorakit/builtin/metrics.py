"""Built-in classification metrics, computed with numpy from a confusion matrix.

sklearn is deliberately not a dependency: these few formulas are easy to get exactly right and a
confusion matrix gives all of them in one pass. Semantics match sklearn's
``labels=range(num_labels), zero_division=0``: every one of ``num_labels`` classes counts in a macro
average, including classes absent from both ``y_true`` and ``y_pred`` (they score 0), and 0/0 is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lorakit.hookspecs import hookimpl
from lorakit.specs import MetricSpec

if TYPE_CHECKING:
    import numpy as np

# A row without a label for the task (torch's ignore_index, which the losses skip too).
IGNORE_INDEX = -100


def confusion_matrix(y_true: Any, y_pred: Any, num_labels: int) -> np.ndarray:
    """The ``num_labels x num_labels`` count matrix, rows = true class, columns = predicted class.

    Rows whose true label is -100 have no label for this task (``data.missing_labels = "mask"``) and are
    left out. Other labels outside ``[0, num_labels)`` are a bug upstream (label encoding should have
    caught them), so they raise ``ValueError`` rather than being silently dropped.
    """
    import numpy as np

    true = np.asarray(y_true, dtype=np.int64).ravel()
    pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} items but y_pred has {pred.size}")
    labelled = true != IGNORE_INDEX
    true, pred = true[labelled], pred[labelled]
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    for name, arr in (("y_true", true), ("y_pred", pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_labels):
            raise ValueError(f"{name} has labels outside [0, {num_labels}): min {arr.min()}, max {arr.max()}")
    flat = np.bincount(true * num_labels + pred, minlength=num_labels * num_labels)
    return flat.reshape(num_labels, num_labels)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` with 0 where ``den`` is 0 (sklearn's ``zero_division=0``)."""
    import numpy as np

    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _counts(y_true: Any, y_pred: Any, num_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, false positives and false negatives."""
    import numpy as np

    cm = confusion_matrix(y_true, y_pred, num_labels)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    return tp, fp, fn


def _f1_per_class(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    # 2tp / (2tp + fp + fn) equals 2PR/(P+R) whenever that is defined, and is 0 (not NaN) for a
    # class never seen nor predicted, which is how sklearn scores it.
    return _safe_div(2 * tp, 2 * tp + fp + fn)


def accuracy(y_true: Any, y_pred: Any, num_labels: int) -> float:
    """Fraction of exact matches (0.0 on empty input)."""
    tp, _, fn = _counts(y_true, y_pred, num_labels)
    return float(_safe_div(tp.sum(), (tp + fn).sum()))


def macro_f1(y_true: Any, y_pred: Any, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over all ``num_labels`` classes."""
    return float(_f1_per_class(*_counts(y_true, y_pred, num_labels)).mean())


def micro_f1(y_true: Any, y_pred: Any, num_labels: int) -> float:
    """F1 of the pooled counts; equals accuracy for single-label classification."""
    tp, fp, fn = _counts(y_true, y_pred, num_labels)
    return float(_f1_per_class(tp.sum(), fp.sum(), fn.sum()))


def weighted_f1(y_true: Any, y_pred: Any, num_labels: int) -> float:
    """Per-class F1 averaged with weights proportional to each class's support in ``y_true``."""
    tp, fp, fn = _counts(y_true, y_pred, num_labels)
    support = tp + fn
    return float(_safe_div((_f1_per_class(tp, fp, fn) * support).sum(), support.sum()))


def macro_precision(y_true: Any, y_pred: Any, num_labels: int) -> float:
    """Unweighted mean of per-class precision (0 for a class never predicted)."""
    tp, fp, _ = _counts(y_true, y_pred, num_labels)
    return float(_safe_div(tp, tp + fp).mean())


def macro_recall(y_true: Any, y_pred: Any, num_labels: int) -> float:
    """Unweighted mean of per-class recall (0 for a class absent from ``y_true``)."""
    tp, _, fn = _counts(y_true, y_pred, num_labels)
    return float(_safe_div(tp, tp + fn).mean())


_METRICS: tuple[tuple[str, Callable[..., float], str], ...] = (
    ("accuracy", accuracy, "fraction of correct predictions"),
    ("macro_f1", macro_f1, "mean F1 over all classes, each class counting equally"),
    ("micro_f1", micro_f1, "F1 over pooled counts (equals accuracy for single-label tasks)"),
    ("weighted_f1", weighted_f1, "per-class F1 weighted by true support"),
    ("macro_precision", macro_precision, "mean precision over all classes"),
    ("macro_recall", macro_recall, "mean recall over all classes"),
)


@hookimpl
def lorakit_register_metrics(register: Callable[[MetricSpec], None]) -> None:
    """Register accuracy and the F1 / precision / recall averages."""
    for name, compute, description in _METRICS:
        register(MetricSpec(name=name, compute=compute, greater_is_better=True, description=description))
