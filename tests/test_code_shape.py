"""Functions a reader can hold: no function in ``lorakit/`` runs over 60 lines (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import lorakit

MAX_LINES = 60
ROOT = Path(lorakit.__file__).parent

# Still too long, each to be split and then dropped from here (the list only ever shrinks; it is empty).
# "path relative to lorakit/::qualified name"
ALLOWED: set[str] = set()


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.AST]]:
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{node.name}"
            found.append((name, node))
            found += _functions(node, f"{name}.")
        elif isinstance(node, ast.ClassDef):
            found += _functions(node, f"{prefix}{node.name}.")
    return found


def _long_functions() -> dict[str, int]:
    """Every function over MAX_LINES lines, ``def`` to its last line (docstring included, decorators
    not: click's option stacks are declarations), as ``path::name``."""
    long = {}
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, node in _functions(tree):
            assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_LINES:
                long[f"{path.relative_to(ROOT).as_posix()}::{name}"] = lines
    return long


def test_no_function_over_sixty_lines():
    too_long = {name: n for name, n in _long_functions().items() if name not in ALLOWED}
    assert not too_long, f"functions over {MAX_LINES} lines (split them): {too_long}"


def test_the_allow_list_names_only_functions_still_too_long():
    stale = ALLOWED - set(_long_functions())
    assert not stale, f"no longer over {MAX_LINES} lines: drop them from ALLOWED: {sorted(stale)}"
