"""Regenerate data/raw/*.csv: small synthetic Chinese risk-review data for the shipped example configs.

Run: python scripts/make_synthetic_data.py   (deterministic; the files are committed)
"""

import csv
from pathlib import Path

from lorakit.testing import synthetic_rows

RAW = Path(__file__).resolve().parent.parent / "data" / "raw"
FILES = {
    "train_5w.csv": (["text", "label"], 2, 20240520),
    "train_double_label.csv": (["text", "risk_level", "is_adopt", "risk_score"], 2, 20240522),
    "train_tri_label.csv": (["text", "risk_level", "is_adopt", "channel", "risk_score"], 3, 20240524),
}


def main() -> None:
    RAW.mkdir(parents=True, exist_ok=True)
    for name, (columns, tasks, seed) in FILES.items():
        with (RAW / name).open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(synthetic_rows(600, seed=seed, tasks=tasks))


if __name__ == "__main__":
    main()
