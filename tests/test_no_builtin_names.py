"""The core names no built-in plugin: outside ``lorakit/builtin/`` a built-in's name appears only as a
default value, in documentation (docstrings, comments, config-reference and ``--help`` texts) or in the
explicit allow-list below, each entry with its reason."""

from __future__ import annotations

import ast
import re
from pathlib import Path

LORAKIT = Path(__file__).resolve().parent.parent / "lorakit"
# Built-in plugins and the plugin packages shipped beside lorakit. Metric names (accuracy, macro_f1)
# are left to the headline-metric rules, which name their defaults in one place of their own.
NAMES = {
    "lora", "dora", "ia3",  # tuning methods
    "linear", "mlp",  # heads (and the linear LR schedule)
    "cross_entropy", "focal", "coral",  # losses
    "cosine", "constant",  # LR schedules
    "bert", "ernie", "roberta",  # backbones
    "ordinal",  # head package
    "ray",  # executor
}  # fmt: skip
ALLOWED = {
    # lorakit.testing builds tiny Hugging Face models for plugin authors: "roberta" is a model type there
    ("testing.py", "roberta"),
    # tiny_overrides shrinks the default method's rank (model.lora.rank) for tests of shipped configs
    ("testing.py", "lora"),
}
# A string that is a name ("ia3"), or a config key that names one (model.lora.rank, [model.lora]);
# prose that mentions a name in passing ("LoRA + heads", torch's "Linear modules") is not a lookup.
CONFIG_KEY = re.compile(r"\bmodel\.([a-z0-9_]+)")


def _doc_strings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are documentation or defaults: docstrings, ``help=``/``metadata``
    texts, the text of ``_doc(...)`` fields, and ``default=`` values or parameter defaults."""
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                allowed.add(id(body[0].value))
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            parts = [*node.args[:1]] if name == "_doc" else []
            parts += [
                kw.value for kw in node.keywords if kw.arg in ("help", "default", "factory", "metadata")
            ]
            for part in parts:
                allowed.update(id(sub) for sub in ast.walk(part))
        if isinstance(node, ast.arguments):
            for default in [*node.defaults, *node.kw_defaults]:
                if default is not None:
                    allowed.update(id(sub) for sub in ast.walk(default))
    return allowed


def offending(path: Path, root: Path = LORAKIT) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed = _doc_strings(tree)
    rel = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in allowed:
            text = node.value.strip()
            words = {text} if text in NAMES else set(CONFIG_KEY.findall(text)) & NAMES
            for word in sorted(words):
                if (rel, word) not in ALLOWED:
                    found.append((f"{rel}:{node.lineno}", word))
    return found


def test_the_core_names_no_built_in_plugin():
    files = [p for p in LORAKIT.rglob("*.py") if "builtin" not in p.relative_to(LORAKIT).parts]
    found = [hit for path in sorted(files) for hit in offending(path)]
    assert found == []


def test_the_check_finds_a_name(tmp_path: Path):
    """The checker itself: a name in code is found; in a docstring, a help text or a default it is not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Uses lora."""\n'
        "import click\n"
        'def f(method="lora"):\n    """dora."""\n    return method == "ia3"\n'
        'opt = click.option("--x", help="mlp or linear")\n',
        encoding="utf-8",
    )
    assert [word for _, word in offending(sample, tmp_path)] == ["ia3"]
