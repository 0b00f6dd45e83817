"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck` (`nox -l` lists them)."""

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "plugins", "docs"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"  # the CPU build; a bare torch requirement pulls a multi-GB CUDA build


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "lorakit", "tests", "bench", "plugins", "scripts", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the lorakit package with mypy."""
    session.install(TORCH)
    session.install("-e", ".", "mypy")
    session.run("mypy", "lorakit")


@nox.session
def plugins(session: nox.Session) -> None:
    """Install each plugins/* package (as a user would, not editable) and run its own tests."""
    from pathlib import Path

    session.install(TORCH)
    session.install("-e", ".", "pytest-xdist")
    for package in sorted(p.parent for p in Path("plugins").glob("*/pyproject.toml")):
        # One at a time, uninstalled afterwards: each package's tests see the core and only itself.
        session.install(f"./{package.as_posix()}[test]")
        with session.chdir(package):
            # two workers: the tests mostly wait on `lorakit train` subprocesses starting up
            session.run("pytest", "-n", "2", *session.posargs)
        session.run("pip", "uninstall", "--yes", package.name)


@nox.session
def docs(session: nox.Session) -> None:
    """Check the generated reference pages are current, then build the site (warnings are errors)."""
    session.install(TORCH)  # `.[docs]` depends on torch: without this pip would pull a CUDA build
    session.install("-e", ".[docs]")
    session.run("python", "-m", "lorakit._docs", "--check")
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the benchmarks under bench/ (slow; figures go to docs/benchmarks.md)."""
    session.install(TORCH)
    session.install("-e", ".[demo]")
    for script in sorted(__import__("pathlib").Path("bench").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)
