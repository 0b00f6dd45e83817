"""The tokenized cache on disk: ``<root>/<key>/`` with one ``.npy`` per array and a ``meta.json``.

An entry appears atomically: it is written into a temp folder inside the root and renamed into place, so
a reader sees a whole entry or none. When two builders race, the first rename wins and the loser
discards its copy. Every load checks meta.json against the key and each array file's sha256; an entry
that fails is moved aside and rebuilt with a :class:`CacheWarning`.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import DamagedFile, LorakitWarning
from ..fsutil import dumps_json, read_json
from .fingerprint import CACHE_FORMAT_VERSION, KEY_CHARS, file_sha256, fingerprint_key

if TYPE_CHECKING:
    from ..config.schema import ExperimentConfig
    from .tokenize import TokenizedSplit

SPLITS = ("train", "val", "test")
ARRAYS = ("ids", "offsets", "labels", "rows")
DTYPES = {"ids": "int32", "offsets": "int64", "labels": "int64", "rows": "int64"}
META = "meta.json"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
DEFAULT_ROOT = Path("data") / "processed"


class CacheWarning(LorakitWarning):
    """A cache entry failed its checks and is being rebuilt."""


class CorruptEntry(Exception):
    """Raised inside this module when an entry fails verification; callers rebuild."""


def cache_root(cfg: ExperimentConfig | None = None) -> Path:
    """Where caches live: ``data.cache_dir``, else ``$LORAKIT_CACHE``, else ``./data/processed``."""
    if cfg is not None and cfg.data.cache_dir:
        return Path(cfg.data.cache_dir)
    env = os.environ.get("LORAKIT_CACHE")
    return Path(env) if env else DEFAULT_ROOT


def entry_path(root: str | Path, key: str) -> Path:
    return Path(root) / key[:KEY_CHARS]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform opens folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, write: Any) -> None:
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def write_entry(root: str | Path, key: str, meta: dict[str, Any], splits: dict[str, TokenizedSplit]) -> Path:
    """Write an entry atomically and return its folder; a concurrent builder's finished entry wins."""
    import numpy as np

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = entry_path(root, key)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=root))
    try:
        files: dict[str, dict[str, Any]] = {}
        for split, data in splits.items():
            for array in ARRAYS:
                name = f"{split}.{array}.npy"
                value = np.ascontiguousarray(getattr(data, array), dtype=DTYPES[array])
                _write_file(tmp / name, lambda fh, v=value: np.save(fh, v, allow_pickle=False))
                files[name] = {"sha256": file_sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        meta = {
            **meta,
            "key": key,
            "cache_format_version": CACHE_FORMAT_VERSION,
            "created": _now(),
            "files": files,
        }
        _write_file(tmp / META, lambda fh: fh.write(dumps_json(meta).encode("utf-8")))
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) and not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another builder got there first: use theirs
        else:
            _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@attrs.define(kw_only=True, frozen=True)
class LoadedEntry:
    path: Path
    meta: dict[str, Any]
    splits: dict[str, dict[str, Any]]  # split → {array name: memory-mapped array}


def _load_array(path: Path) -> Any:
    import numpy as np

    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # a zero-length array has nothing to map (numpy refuses); load it plainly
        return np.load(path, allow_pickle=False)


def read_entry(path: Path, key: str) -> LoadedEntry | None:
    """Load and verify an entry; None if there is none, CorruptEntry(reason) if it fails a check."""
    if not path.exists():
        return None
    meta = _read_meta(path, key)
    splits = _load_files(path, meta["files"])
    _check_splits(splits, len(meta["label_map"]["tasks"]))
    return LoadedEntry(path=path, meta=meta, splits=splits)


def _read_meta(path: Path, key: str) -> dict[str, Any]:
    """meta.json of the entry, for ``key``, with its file list and label map."""
    try:
        meta = read_json(path / META)
    except DamagedFile as exc:
        raise CorruptEntry(f"{META} {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise CorruptEntry(f"{META} unreadable ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("key") != key:
        raise CorruptEntry(f"{META} is for another key")
    if (
        meta.get("cache_format_version") != CACHE_FORMAT_VERSION
        or fingerprint_key(meta.get("inputs", {})) != key
    ):
        raise CorruptEntry(f"{META} inputs do not match the key")
    files, label_map = meta.get("files"), meta.get("label_map")
    if (
        not isinstance(files, dict)
        or not isinstance(label_map, dict)
        or not isinstance(label_map.get("tasks"), dict)
    ):
        raise CorruptEntry(f"{META} lacks its file list or label map")
    return meta


def _load_files(path: Path, files: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every array meta.json lists, each checked against its size and checksum before it is loaded."""
    splits: dict[str, dict[str, Any]] = {}
    expected = {f"{split}.{array}.npy": (split, array) for split in SPLITS for array in ARRAYS}
    for name, info in files.items():
        if name not in expected:  # checked before touching the file: meta.json names it
            raise CorruptEntry(f"unexpected file {name!r} in {META}")
        split, array = expected[name]
        file = path / name
        try:
            ok = file.stat().st_size == info["bytes"] and file_sha256(file) == info["sha256"]
        except (OSError, KeyError, TypeError):
            ok = False
        if not ok:
            raise CorruptEntry(f"{name} fails its checksum")
        try:
            splits.setdefault(split, {})[array] = _load_array(file)
        except ValueError as exc:
            raise CorruptEntry(f"{name} unreadable: {exc}") from None
    return splits


def _check_splits(splits: dict[str, dict[str, Any]], n_tasks: int) -> None:
    """Each split's arrays fit together (offsets into ids, one label row of ``n_tasks`` a text)."""
    import numpy as np

    for split, arrays in splits.items():
        if set(arrays) != set(ARRAYS):
            raise CorruptEntry(f"split {split} lacks arrays")
        n = len(arrays["offsets"]) - 1
        offsets = arrays["offsets"]
        if (
            n < 0
            or offsets[0] != 0
            or offsets[-1] != len(arrays["ids"])
            or arrays["labels"].shape != (n, n_tasks)
            or arrays["rows"].shape != (n,)
            or any(str(arrays[a].dtype) != DTYPES[a] for a in ARRAYS)
            or (n and bool(np.any(np.diff(offsets) < 0)))
        ):
            raise CorruptEntry(f"split {split} has inconsistent arrays")
    if "train" not in splits:
        raise CorruptEntry("no train split")


def discard(path: Path) -> None:
    """Remove an entry: first renamed aside (so no reader sees half of it), then deleted."""
    aside = path.parent / f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # someone else removed it
    shutil.rmtree(aside, ignore_errors=True)


@attrs.define(kw_only=True, frozen=True)
class EntryInfo:
    """One entry as `cache ls` shows it."""

    path: Path
    meta: dict[str, Any] | None  # None: meta.json unreadable
    size: int

    @property
    def key(self) -> str:
        return (self.meta or {}).get("key", self.path.name)

    @property
    def created(self) -> dt.datetime:
        text = (self.meta or {}).get("created")
        if text:
            try:
                return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
            except ValueError:
                pass
        return dt.datetime.fromtimestamp(self.path.stat().st_mtime, dt.timezone.utc)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def iter_entries(root: str | Path) -> Iterator[EntryInfo]:
    """Entries under ``root``, oldest first (temp and trash folders skipped)."""
    root = Path(root)
    if not root.is_dir():
        return
    found = []
    for path in root.iterdir():
        if not path.is_dir() or path.name.startswith("."):
            continue
        try:
            meta = read_json(path / META)
        except (OSError, ValueError):
            meta = None
        found.append(EntryInfo(path=path, meta=meta if isinstance(meta, dict) else None, size=_size(path)))
    yield from sorted(found, key=lambda e: e.created)


def leftovers(root: str | Path, older_than_s: float = 3600) -> list[Path]:
    """Temp and trash folders of crashed builders, older than ``older_than_s`` (younger may be in use)."""
    root = Path(root)
    if not root.is_dir():
        return []
    now = dt.datetime.now().timestamp()
    return [
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name.startswith((TMP_PREFIX, TRASH_PREFIX))
        and now - p.stat().st_mtime > older_than_s
    ]
