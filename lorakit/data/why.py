"""``lorakit cache why``: would this config hit the cache, and if not, what differs from the nearest entry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .cache import CorruptEntry, EntryInfo, entry_path, iter_entries, read_entry
from .cache import cache_root as default_cache_root
from .fingerprint import describe_differences, equal_aspects, fingerprint_inputs, fingerprint_key

if TYPE_CHECKING:
    from ..config.schema import ExperimentConfig
    from ..plugins import Plugins


@attrs.define(kw_only=True, frozen=True)
class Explanation:
    """The answer of :func:`explain`."""

    key: str
    path: Path  # where the entry for this config lives (or would)
    hit: bool
    damaged: str | None  # an entry exists but fails its checks: why (it would be rebuilt)
    nearest: EntryInfo | None  # on a miss, the entry sharing the most inputs
    differences: list[str]  # from ``nearest`` to this config
    inputs: dict[str, Any]

    def lines(self) -> list[str]:
        """What the CLI prints."""
        if self.hit:
            return [f"HIT {self.key[: len(self.path.name)]}  {self.path}"]
        head = f"MISS {self.key[: len(self.path.name)]}"
        if self.damaged:
            return [f"{head}: the entry at {self.path} is damaged ({self.damaged}) and would be rebuilt"]
        if self.nearest is None:
            return [f"{head}: no cache entries in {self.path.parent}"]
        created = (self.nearest.meta or {}).get("created", "?")
        return [
            f"{head}: nearest entry {self.nearest.path.name} (created {created}) differs in:",
            *(f"  {line}" for line in self.differences),
        ]


def explain(
    cfg: ExperimentConfig, plugins: Plugins | None = None, root: str | Path | None = None
) -> Explanation:
    """Compare ``cfg``'s fingerprint with the cache; reads the input files (to hash them) but not the data."""
    from ..plugins import get_plugins

    plugins = plugins or get_plugins()
    root = Path(root) if root is not None else default_cache_root(cfg)
    inputs = fingerprint_inputs(cfg, plugins)
    key = fingerprint_key(inputs)
    path = entry_path(root, key)
    damaged = None
    try:
        if read_entry(path, key) is not None:
            return Explanation(
                key=key, path=path, hit=True, damaged=None, nearest=None, differences=[], inputs=inputs
            )
    except CorruptEntry as exc:
        damaged = str(exc)
    candidates = [e for e in iter_entries(root) if e.meta and isinstance(e.meta.get("inputs"), dict)]
    nearest = None
    if candidates and damaged is None:
        # Most inputs in common; the newest among equals.
        nearest = max(reversed(candidates), key=lambda e: equal_aspects(e.meta["inputs"], inputs))  # type: ignore[index]
    differences = describe_differences(nearest.meta["inputs"], inputs) if nearest and nearest.meta else []
    return Explanation(
        key=key,
        path=path,
        hit=False,
        damaged=damaged,
        nearest=nearest,
        differences=differences,
        inputs=inputs,
    )
