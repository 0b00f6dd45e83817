"""TOML loading with ``base_config`` inheritance, path resolution, ``--set`` overrides and provenance.

Merging rules: tables merge deeply; arrays and scalars replace. A path is resolved against the
directory of the file that wrote it, so a template's data path keeps meaning the same file when a
child in another folder inherits it. ``pkg://package/sub/path`` points inside an installed package.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..errors import ConfigError
from ..readback import not_regular

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Keys whose string values are paths, resolved against the file that set them.
PATH_KEYS = frozenset(
    {
        "data.raw_data_path",
        "data.val_data_path",
        "data.test_data_path",
        "data.global_label_map",
        "data.cache_dir",
    }
)
# model.arch is a hub id *or* a path: resolved only when it is clearly a path.
MAYBE_PATH_KEYS = frozenset({"model.arch"})

OVERRIDE_SOURCE = "--set"
DEFAULT_SOURCE = "default"


@attrs.define(kw_only=True)
class RawConfig:
    """A merged config before validation."""

    data: dict[str, Any]
    provenance: dict[str, str]
    files: list[Path]
    path: Path | None
    # each model/data reference as written (``pkg://…``, a hub id, a relative path) and the directory it was
    # relative to: what config_copy.toml keeps, so that the copy travels (config.references)
    written: dict[str, tuple[str, str]] = attrs.field(factory=dict)

    @property
    def source_file(self) -> str:
        return str(self.path) if self.path else "<dict>"


def resolve_path(value: str, relative_to: Path, *, key: str = "path", source: str = "") -> str:
    """Resolve a config path: ``pkg://pkg/sub`` inside an installed package, relative paths from ``relative_to``."""
    if value.startswith("pkg://"):
        package, _, sub = value[len("pkg://") :].partition("/")
        root = _package_dir(package)
        if root is None:
            where = f" ({source})" if source else ""
            raise ConfigError([f"{key}: package {package!r} of {value!r} is not installed{where}"])
        return str(root / sub) if sub else str(root)
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = relative_to / path
    return str(path.resolve())


def _package_dir(package: str) -> Path | None:
    """Where an installed package lives, found *without importing it* (importing may run broken code)."""
    import importlib.util

    top, _, rest = package.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        base = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin:
        base = Path(spec.origin).parent
    else:
        return None
    return base.joinpath(*rest.split(".")) if rest else base


def looks_like_path(value: str, relative_to: Path) -> bool:
    return value.startswith(("pkg://", "./", "../", "/", "~")) or (relative_to / value).exists()


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _resolve_paths(
    data: dict[str, Any], base_dir: Path, source: str, problems: list[str]
) -> dict[str, tuple[str, str]]:
    """Resolve the path keys of one file's table in place; each reference as written, with ``base_dir``."""
    written: dict[str, tuple[str, str]] = {}
    for dotted in PATH_KEYS | MAYBE_PATH_KEYS:
        parent: Any = data
        *heads, last = dotted.split(".")
        for head in heads:
            parent = parent.get(head) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or not isinstance(parent.get(last), str):
            continue
        value = parent[last]
        written[dotted] = (value, str(base_dir))
        if dotted in MAYBE_PATH_KEYS and not looks_like_path(value, base_dir):
            continue
        try:
            parent[last] = resolve_path(value, base_dir, key=dotted, source=source)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return written


def _merge(base: dict[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def file_kind_problem(path: str | Path) -> str | None:
    """``not a regular file (a FIFO)`` and the like when ``path`` exists but is not a regular file, else None
    (a missing file is for whoever reads it to report). Checked before opening: opening a FIFO blocks until
    some writer comes, for ever if none does."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    kind = not_regular(mode)
    return f"not a regular file ({kind})" if kind else None


def _toml_text(path: Path, referrer: str | None) -> str:
    """The config file's text: a regular file of UTF-8 (a leading byte-order mark is dropped)."""
    problem = file_kind_problem(path)
    if problem is not None:
        where = f"base_config: {path} is " if referrer else f"{path}: "
        raise ConfigError([f"{where}{problem}{f' ({referrer})' if referrer else ''}"])
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if referrer:
            raise ConfigError([f"base_config: {path} does not exist ({referrer})"]) from None
        raise ConfigError([f"{path}: config file does not exist"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}, line {line})"]
        ) from None


def _read_toml(path: Path, referrer: str | None) -> dict[str, Any]:
    text = _toml_text(path, referrer)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None


def _load_chain(path: Path, seen: list[Path], referrer: str | None) -> RawConfig:
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(p.name for p in [*seen, path])
        raise ConfigError([f"base_config: cycle {cycle} ({seen[-1]})"])
    raw = _read_toml(path, referrer)
    problems: list[str] = []
    written = _resolve_paths(raw, path.parent, str(path), problems)
    if problems:
        raise ConfigError(problems)
    base_ref = raw.get("base_config")
    base = RawConfig(data={}, provenance={}, files=[], path=path)
    if base_ref is not None:
        if not isinstance(base_ref, str):
            raise ConfigError(
                [f"base_config: expected a path string, got {type(base_ref).__name__} ({path})"]
            )
        base_path = Path(resolve_path(base_ref, path.parent, key="base_config", source=str(path)))
        base = _load_chain(base_path, [*seen, path], str(path))
    provenance = dict(base.provenance)
    for key in _flatten(raw):
        provenance[key] = str(path)
    # A child's table replaces nothing by itself: provenance of inherited keys stays with the base.
    return RawConfig(
        data=_merge(base.data, raw),
        provenance=provenance,
        files=[path, *base.files],
        path=path,
        written={**base.written, **written},
    )


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``dotted.key=value``; the value is read as TOML (``1e-4``, ``[0.5, 0.5]``, ``true``), else a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"--set {text!r}: expected KEY=VALUE, e.g. train.lr=1e-4"])
    value = value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # bare words are strings: --set model.arch=bert-base-chinese
    return key, parsed


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def load_raw(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = (), *, cwd: Path | None = None
) -> RawConfig:
    """Load a config file (following ``base_config``) or a dict, then apply ``--set`` overrides."""
    cwd = cwd or Path.cwd()
    if isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
        problems: list[str] = []
        written = _resolve_paths(data, cwd, "<dict>", problems)
        if problems:
            raise ConfigError(problems)
        provenance = {key: "<dict>" for key in _flatten(data)}
        files: list[Path] = []
        base_ref = data.get("base_config")
        if isinstance(base_ref, str):
            base_path = Path(resolve_path(base_ref, cwd, key="base_config"))
            base = _load_chain(base_path, [], "<dict>")
            data = _merge(base.data, data)
            provenance = {**base.provenance, **provenance}
            files = base.files
            written = {**base.written, **written}
        path = None
    else:
        path = Path(source).expanduser().resolve()
        chain = _load_chain(path, [], None)
        data, provenance, files, written = chain.data, chain.provenance, chain.files, chain.written
    override_data: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(override_data, key, value)
    if override_data:
        problems = []
        written = {**written, **_resolve_paths(override_data, cwd, OVERRIDE_SOURCE, problems)}
        if problems:
            raise ConfigError(problems)
        data = _merge(data, override_data)
        for key in _flatten(override_data):
            provenance[key] = OVERRIDE_SOURCE
    return RawConfig(data=data, provenance=provenance, files=files, path=path, written=written)
