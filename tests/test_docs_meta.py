"""Meta-tests: the docs and the test suite keep up with the code.

* every hook of lorakit/hookspecs.py is in docs/hooks.md with its exact signature and firstresult flag,
  and every field of the spec objects the registration hooks take is described there;
* every hook has a test (its name appears in a test file other than this one);
* docs/config-reference.md is what ``python -m lorakit._docs`` generates, and names every schema key;
* docs/cli-reference.md is what it generates, and names every command and option;
* every page under docs/ is in the mkdocs nav, and every nav entry exists;
* the plugin package built in docs/writing-plugins.md passes its own tests.

That every file in configs/ loads and validates is tests/test_config.py::test_every_shipped_config_validates.
None of this needs mkdocs; `nox -s docs` builds the site with warnings as errors.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import attrs
import click
import pytest

from lorakit import _docs, hookspecs
from lorakit.cli import COMMANDS, cli
from lorakit.config.schema import ExperimentConfig
from lorakit.specs import SPEC_KINDS

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
REGENERATE = "regenerate it with `python -m lorakit._docs` and commit the result"


def hook_functions() -> dict[str, Any]:
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("lorakit_") and hasattr(function, "lorakit_spec")
    }


def signature_text(name: str, function: Any) -> str:
    """``lorakit_x(arg: Type, ...) -> Return`` as the hook reference must print it (annotations are strings)."""
    sig = inspect.signature(function)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def page_sections(text: str) -> dict[str, str]:
    """``### `hook_name` `` heading → the text up to the next heading."""
    parts = re.split(r"^#{2,3} ", text, flags=re.MULTILINE)
    sections = {}
    for part in parts[1:]:
        heading, _, body = part.partition("\n")
        sections[heading.strip().strip("`")] = body
    return sections


def test_there_are_hooks():
    assert len(hook_functions()) >= 13


@pytest.mark.parametrize("name", sorted(hook_functions()))
def test_hook_is_in_the_hook_reference_with_its_signature(name: str):
    function = hook_functions()[name]
    sections = page_sections((DOCS / "hooks.md").read_text(encoding="utf-8"))
    assert name in sections, f"docs/hooks.md has no '### `{name}`' section"
    section = sections[name]
    expected = signature_text(name, function)
    assert expected in section, f"docs/hooks.md: the {name} section must show the signature\n    {expected}"
    firstresult = function.lorakit_spec["firstresult"]
    said = re.search(r"firstresult\W+(yes|no)", section)
    assert said, f"docs/hooks.md: the {name} section must say '*firstresult*: yes' or '*firstresult*: no'"
    assert said.group(1) == ("yes" if firstresult else "no"), f"{name}: firstresult is {firstresult}"


@pytest.mark.parametrize("kind", sorted(SPEC_KINDS))
def test_every_spec_field_is_in_the_hook_reference(kind: str):
    text = (DOCS / "hooks.md").read_text(encoding="utf-8")
    cls = SPEC_KINDS[kind]
    missing = [f.name for f in attrs.fields(cls) if not re.search(rf"`{f.name}[`(]", text)]
    assert not missing, f"docs/hooks.md does not describe {cls.__name__} fields {missing}"


@pytest.mark.parametrize("name", sorted(hook_functions()))
def test_hook_has_a_test(name: str):
    test_files = [
        path
        for path in [*REPO.glob("tests/**/test_*.py"), *REPO.glob("plugins/*/tests/**/test_*.py")]
        if path.name != Path(__file__).name
    ]
    using = [path for path in test_files if name in path.read_text(encoding="utf-8")]
    assert using, f"no test mentions {name}: add one (tests/test_hooks_coverage.py shows the pattern)"


def test_config_reference_is_generated_from_the_schema():
    committed = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    assert committed == _docs.config_reference(), f"docs/config-reference.md is stale: {REGENERATE}"


def schema_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, walked independently of the generator; ``*`` for free table keys."""
    keys = []
    for field in attrs.fields(cls):
        key = f"{prefix}{field.name}"
        keys.append(key)
        tp = field.type
        candidates = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
        for candidate in candidates:
            if attrs.has(candidate):
                keys.extend(schema_keys(candidate, key + "."))
        if get_origin(tp) is dict and attrs.has(get_args(tp)[1]):
            keys.extend(schema_keys(get_args(tp)[1], key + ".*."))
    return keys


def test_every_schema_key_is_in_the_config_reference():
    text = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| (.*) \| (.*) \| (.*) \|$", text, re.MULTILINE)
    documented = {re.sub(r"<\w+>", "*", key): meaning for key, _type, _default, meaning in rows}
    keys = schema_keys(ExperimentConfig)
    assert len(keys) > 60
    missing = [key for key in keys if key not in documented]
    assert not missing, f"docs/config-reference.md lacks {missing}: {REGENERATE}"
    unexplained = [key for key in keys if not documented[key].strip()]
    assert not unexplained, f"no meaning for {unexplained}: give the field a metadata['doc'] in the schema"


def test_cli_reference_is_generated_from_the_help_texts():
    committed = (DOCS / "cli-reference.md").read_text(encoding="utf-8")
    assert committed == _docs.cli_reference(), f"docs/cli-reference.md is stale: {REGENERATE}"


def visible_commands() -> list[tuple[str, click.Command]]:
    found = []
    ctx = click.Context(cli, info_name="lorakit")

    def walk(group: click.Group, prefix: str) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            found.append((f"{prefix} {name}", command))
            if isinstance(command, click.Group):
                walk(command, f"{prefix} {name}")

    walk(cli, "lorakit")
    return found


def test_every_command_and_option_is_in_the_cli_reference():
    sections = page_sections((DOCS / "cli-reference.md").read_text(encoding="utf-8"))
    built = {name.split()[1] for name, _ in visible_commands()}
    # every command of COMMANDS whose module exists (a command not built yet is not listed by the CLI)
    assert set(COMMANDS) - built == {
        name for name in COMMANDS if cli.get_command(click.Context(cli), name) is None
    }
    for full_name, command in visible_commands():
        assert full_name in sections, f"docs/cli-reference.md has no section for `{full_name}`: {REGENERATE}"
        for param in command.params:
            for flag in param.opts if isinstance(param, click.Option) else []:
                assert flag in sections[full_name], f"`{full_name}` {flag} is not in docs/cli-reference.md"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = re.findall(r"^\s+- .*: (\S+\.md)\s*$", (REPO / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert not set(nav) - pages, f"mkdocs.yml names missing pages: {sorted(set(nav) - pages)}"
    assert not pages - set(nav), f"pages missing from the mkdocs.yml nav: {sorted(pages - set(nav))}"


TUTORIAL_FILE = re.compile(r"^```\w+\n# (lorakit-kappa/\S+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.slow
def test_the_tutorial_plugin_package_passes_its_tests(tmp_path: Path):
    files = TUTORIAL_FILE.findall((DOCS / "writing-plugins.md").read_text(encoding="utf-8"))
    assert {name for name, _ in files} >= {
        "lorakit-kappa/pyproject.toml",
        "lorakit-kappa/src/lorakit_kappa/__init__.py",
        "lorakit-kappa/tests/test_kappa.py",
    }
    for name, body in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {name}\n{body}", encoding="utf-8")
    package = tmp_path / "lorakit-kappa"
    env = {**os.environ, "PYTHONPATH": str(package / "src"), "LORAKIT_NO_PROGRESS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "5 passed" in result.stdout
