"""Reading ``global_label_map.json`` ({label: global id}), the one truth for label names.

It lives with the config (which checks every subset against it) so that validating a config never imports
``lorakit.data`` (and through it the plugin manager); ``lorakit.data.labels`` uses it from here.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from .loader import file_kind_problem


def read_global_label_map(path: str | Path) -> dict[str, int]:
    """Read and check ``global_label_map.json``; raises ConfigError naming the file."""
    problem = file_kind_problem(path)
    if problem is not None:
        raise ConfigError([f"{path}: {problem}"])
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: global label map does not exist"]) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read global label map: {exc}"]) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in data.items()
    ):
        raise ConfigError([f"{path}: expected a JSON object {{label: integer id}}"])
    ids = list(data.values())
    if len(set(ids)) != len(ids):
        raise ConfigError([f"{path}: global ids must be unique"])
    return data
