"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck` (`nox -l` lists them)."""

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
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
    session.run("ruff", "check", "lorakit", "tests", "bench", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the lorakit package with mypy."""
    session.install(TORCH)
    session.install("-e", ".", "mypy")
    session.run("mypy", "lorakit")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the benchmarks under bench/ (slow; figures go to docs/benchmarks.md)."""
    session.install(TORCH)
    session.install("-e", ".[demo]")
    for script in sorted(__import__("pathlib").Path("bench").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)
