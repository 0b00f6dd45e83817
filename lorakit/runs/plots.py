"""``lorakit show EXP --plot``: the best epoch's confusion matrices and the per-epoch curves as one PNG.

matplotlib is an extra (``pip install 'lorakit[plot]'``); it is imported only here, and only for ``--plot``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import LorakitError

# fonts with CJK glyphs, tried in order, so that Chinese label names draw as text and not as boxes
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "Source Han Sans SC", "SimHei")


def write_report_png(
    path: Path,
    exp_id: str,
    reports: Mapping[str, Any],
    epochs: list[tuple[str, dict[str, Any]]],
    headline: str,
) -> Path:
    """Write the PNG to ``path``: one confusion matrix per task (best epoch), then the headline metric and
    the training loss per epoch."""
    try:
        import matplotlib
    except ImportError:
        raise LorakitError("lorakit show --plot needs the plot extra: pip install 'lorakit[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    fonts = [name for name in CJK_FONTS if name in installed]
    best = reports.get("best") or {}
    tasks = list((best.get("tasks") or {}).items())
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.5 * (len(tasks) + 1), 4.2), squeeze=False)
    with warnings.catch_warnings(), plt.rc_context({"font.sans-serif": [*fonts, "DejaVu Sans"]}):
        warnings.simplefilter("ignore")  # a glyph no installed font has: drawn as a box, not worth a warning
        for ax, (task, report) in zip(axes[0], tasks, strict=False):
            _confusion(ax, task, report, best.get("epoch"))
        _curves(axes[0][-1], epochs, headline)
        fig.suptitle(exp_id)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _confusion(ax: Any, task: str, report: Mapping[str, Any], epoch: Any) -> None:
    labels, matrix = report["labels"], report["confusion"]
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{task} (epoch {epoch})")
    top = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")


def _curves(ax: Any, epochs: list[tuple[str, dict[str, Any]]], headline: str) -> None:
    numbers = [int(name[len("epoch_") :]) for name, _ in epochs]
    for key in (headline, "train_loss"):
        values = [m.get(key) for _, m in epochs]
        if any(isinstance(v, (int, float)) for v in values):
            ax.plot(
                numbers, [v if isinstance(v, (int, float)) else float("nan") for v in values], "o-", label=key
            )
    ax.set_xticks(numbers)
    ax.set_xlabel("epoch")
    ax.set_title("per epoch")
    ax.legend()
