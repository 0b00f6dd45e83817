"""The cache key: a sha256 over everything that changes the prepared arrays, and a readable diff of two
sets of inputs for ``lorakit cache why``.

Files are keyed by their *content*: a copy under another path hits, one edited cell misses even with its
size and mtime restored. Settings that cannot change the result (val_ratio when a val file is given, the
sample seed without max_rows) are normalised to None so that they do not cause needless misses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..plugins import CORE_DISTRIBUTION

if TYPE_CHECKING:
    from ..config.schema import ExperimentConfig
    from ..plugins import Plugins

# Bump when the layout of the cache or the meaning of any array changes.
CACHE_FORMAT_VERSION = 1
# Hex characters of the key used as the folder name (80 bits: collisions are not a practical concern).
KEY_CHARS = 20

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
)
SPLIT_FILES = ("raw", "val", "test")


def file_sha256(path: str | Path) -> str:
    """sha256 hex of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        # 1 MiB reads: hashlib releases the GIL on large buffers; hashlib.file_digest is 3.11+ only.
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_identity(arch: str) -> dict[str, Any]:
    """What identifies a tokenizer: for a local directory the sha256 of each tokenizer file in it (so a copy
    elsewhere is the same tokenizer), for a hub id its name and revision."""
    directory = Path(arch)
    if not directory.is_dir():
        return {"name": arch, "revision": "main"}
    names = sorted({*TOKENIZER_FILES, *(p.name for p in directory.glob("*.model"))})  # sentencepiece models
    files = {name: file_sha256(directory / name) for name in names if (directory / name).is_file()}
    if not files:  # nothing to hash: fall back to the path rather than matching every empty folder
        return {"path": str(directory.resolve()), "files": {}}
    return {"files": files}


def _source(path: str | None, plugins: Plugins) -> dict[str, Any] | None:
    if path is None:
        return None
    spec = plugins.data_source_for(path)
    reader = spec.name
    dist = plugins.data_sources().source(spec.name).distribution
    if dist and dist != CORE_DISTRIBUTION:
        # A third-party reader may parse differently after an upgrade; our own readers are covered by
        # CACHE_FORMAT_VERSION.
        version = plugins.pm.distributions.get(plugins.data_sources().source(spec.name).plugin, (None, None))[
            1
        ]
        reader = f"{spec.name} ({dist} {version})"
    try:
        if not Path(path).is_file():  # a FIFO would block the hash for ever; the reader names the problem
            raise FileNotFoundError(path)
        sha = file_sha256(path)
        size = Path(path).stat().st_size
    except OSError:
        sha, size = None, None  # the reader reports the missing file when the data is read
    return {"sha256": sha, "bytes": size, "reader": reader}


def source_paths(cfg: ExperimentConfig) -> dict[str, str | None]:
    """``{"raw"|"val"|"test": path or None}``: the config's input files by role."""
    d = cfg.data
    return {"raw": d.raw_data_path, "val": d.val_data_path, "test": d.test_data_path}


def file_inputs(cfg: ExperimentConfig, plugins: Plugins) -> dict[str, Any]:
    """``{"raw"|"val"|"test": {sha256, bytes, reader} or None}`` for the config's input files."""
    return {role: _source(path, plugins) for role, path in source_paths(cfg).items()}


def fingerprint_inputs(cfg: ExperimentConfig, plugins: Plugins | None = None) -> dict[str, Any]:
    """Everything the cache key hashes, as readable JSON-able data (``lorakit cache why`` prints it)."""
    from ..plugins import get_plugins
    from .labels import build_label_map, configured_labels

    plugins = plugins or get_plugins()
    d = cfg.data
    known = configured_labels(cfg)
    tasks: list[dict[str, Any]]
    if all(labels is not None for labels in known.values()):
        label_map = build_label_map(cfg)
        tasks = [{"name": t.name, "labels": t.labels, "global_ids": t.global_ids} for t in label_map.tasks]
    else:  # labels come from the data, whose content is hashed already
        tasks = [{"name": name, "labels": None, "global_ids": None} for name in known]
    ratio_split = d.val_data_path is None or (d.test_data_path is None and d.test_ratio > 0)
    return {
        "cache_format_version": CACHE_FORMAT_VERSION,
        "files": file_inputs(cfg, plugins),
        "tokenizer": tokenizer_identity(cfg.model.arch),
        "max_len": d.max_len,
        "data_process_version": d.data_process_version,
        "text_column": d.text_column,
        "tasks": tasks,
        "derive": {
            name: {"column": r.column, "bins": list(r.bins), "labels": list(r.labels), "right": r.right}
            for name, r in d.derive.items()
        },
        "filters": {
            "drop_unknown_labels": d.drop_unknown_labels,
            "drop_empty_text": d.drop_empty_text,
            "missing_labels": d.missing_labels,
        },
        "sampling": {
            "max_rows": d.max_rows,
            "sample_seed": d.sample_seed if d.max_rows is not None else None,
        },
        "split": {
            "val_ratio": d.val_ratio if d.val_data_path is None else None,
            "test_ratio": d.test_ratio if d.test_data_path is None and d.test_ratio > 0 else None,
            "seed": cfg.seed if ratio_split else None,
        },
        "encoding": {"encoding": d.encoding, "encoding_errors": d.encoding_errors},
    }


def fingerprint_key(inputs: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``inputs`` (key order normalised; list order kept)."""
    canonical = json.dumps(inputs, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---- differences, for `lorakit cache why` ---------------------------------------------------------


def _scalar_aspects(inputs: dict[str, Any]) -> dict[str, Any]:
    """Named, comparable pieces of the inputs; the names are what `cache why` prints."""
    aspects: dict[str, Any] = {"cache format version": inputs.get("cache_format_version")}
    for role in SPLIT_FILES:
        src = (inputs.get("files") or {}).get(role)
        aspects[f"{role} file content"] = src and src.get("sha256")
        aspects[f"{role} file reader"] = src and src.get("reader")
    aspects["tokenizer"] = inputs.get("tokenizer")
    for key in ("max_len", "data_process_version", "text_column"):
        aspects[key] = inputs.get(key)
    for group in ("filters", "sampling", "split", "encoding"):
        for key, value in (inputs.get(group) or {}).items():
            aspects[key] = value
    return aspects


def _task_aspects(inputs: dict[str, Any]) -> dict[str, Any]:
    tasks = inputs.get("tasks") or []
    aspects: dict[str, Any] = {"tasks": [t["name"] for t in tasks]}
    for t in tasks:
        aspects[f"labels of {t['name']}"] = t["labels"]
        aspects[f"global ids of {t['name']}"] = t["global_ids"]
    for name, rule in (inputs.get("derive") or {}).items():
        aspects[f"derive rule {name}"] = rule
    return aspects


def aspects(inputs: dict[str, Any]) -> dict[str, Any]:
    """Flat ``{aspect: value}`` of a set of inputs."""
    return {**_scalar_aspects(inputs), **_task_aspects(inputs)}


def equal_aspects(a: dict[str, Any], b: dict[str, Any]) -> int:
    """How many aspects two sets of inputs share (the nearest cache entry has the most)."""
    x, y = aspects(a), aspects(b)
    return sum(1 for k in x.keys() & y.keys() if x[k] == y[k])


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a sha256
        return value[:12]
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def describe_differences(cached: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Readable differences from a cached entry's inputs to the current ones, e.g. ``max_len 128 → 64``,
    ``raw file content``, ``label order of risk_level``."""
    old, new = aspects(cached), aspects(current)
    out: list[str] = []
    for name in list(dict.fromkeys([*old, *new])):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if name.endswith("file content"):
            role = name.split()[0]
            out.append(f"{role} file added" if a is None else f"{role} file removed" if b is None else name)
        elif name == "tokenizer":
            out.append(_tokenizer_difference(a, b))
        elif name.startswith("labels of ") and a and b and sorted(a) == sorted(b):
            out.append(f"label order of {name.removeprefix('labels of ')} {_short(a)} → {_short(b)}")
        elif name.startswith("derive rule "):
            if a is None or b is None:
                out.append(f"{name} {'added' if a is None else 'removed'}")
            else:
                out.extend(
                    f"{name} {k} {_short(a.get(k))} → {_short(b.get(k))}" for k in a if a[k] != b.get(k)
                )
        elif name.startswith("global ids of ") and (
            a is None or b is None or old.get(f"labels of {name[14:]}") != new.get(f"labels of {name[14:]}")
        ):
            continue  # follows from the label change already listed, or from adding a global map
        else:
            out.append(f"{name} {_short(a)} → {_short(b)}")
    return out


def _tokenizer_difference(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    files_a, files_b = (a or {}).get("files"), (b or {}).get("files")
    if files_a and files_b:
        changed = sorted(k for k in {*files_a, *files_b} if files_a.get(k) != files_b.get(k))
        return f"tokenizer ({', '.join(changed)} differ)"
    return f"tokenizer {_tok(a)} → {_tok(b)}"


def _tok(identity: dict[str, Any] | None) -> str:
    if not identity:
        return "none"
    if "name" in identity:
        return f"{identity['name']}@{identity.get('revision', 'main')}"
    return "local files" if identity.get("files") else str(identity.get("path"))
