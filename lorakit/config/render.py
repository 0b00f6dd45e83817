"""Writing configs back out: TOML (config_copy.toml, ``config show``) and provenance listings."""

from __future__ import annotations

import json
import os
from typing import Any

import tomli_w


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def to_toml(data: dict[str, Any]) -> str:
    """TOML text for a config dict; keys that are None (unset) are left out, as TOML has no null."""
    return tomli_w.dumps(_drop_none(data), multiline_strings=False)


def short_source(source: str, cwd: str | None = None) -> str:
    """A provenance source as the user would type it: relative to the working directory when inside it."""
    if source.startswith(("<", "--", "default")):
        return source
    try:
        rel = os.path.relpath(source, cwd or os.getcwd())
    except ValueError:
        return source
    return source if rel.startswith("..") else rel


def provenance_lines(flat: dict[str, Any], provenance: dict[str, str]) -> list[str]:
    """``key = value  # source`` lines, aligned, in key order."""
    rendered = []
    for key in sorted(flat):
        value = flat[key]
        text = "(unset)" if value is None else json.dumps(value, ensure_ascii=False)
        rendered.append((f"{key} = {text}", short_source(provenance.get(key, "default"))))
    width = max((len(left) for left, _ in rendered), default=0)
    return [f"{left.ljust(width)}  # {src}" for left, src in rendered]
