"""The ``lorakit`` command. Thin: parse, call the API, print.

Commands are imported only when run, so ``lorakit --help`` starts without torch or pandas.
"""

from __future__ import annotations

import importlib
import re
import sys
import traceback
import warnings
from typing import Any

import click

from . import __version__
from .errors import LorakitError, LorakitWarning, did_you_mean, machine_problem

# name → "module:attribute"; each module keeps heavy imports inside its functions.
COMMANDS: dict[str, str] = {
    "train": "lorakit.commands.train:train",
    "predict": "lorakit.commands.train:predict",
    "plugins": "lorakit.commands.plugins:plugins",
    "config": "lorakit.commands.config:config",
    "cache": "lorakit.commands.cache:cache",
    "ls": "lorakit.commands.ls:ls",
    "compare": "lorakit.commands.compare:compare",
    "show": "lorakit.commands.show:show",
    "rollback": "lorakit.commands.rollback:rollback",
    "index": "lorakit.commands.index:index",
    "devices": "lorakit.commands.sched:devices",
    "estimate": "lorakit.commands.sched:estimate",
    "submit": "lorakit.commands.sched:submit",
    "queue": "lorakit.commands.sched:queue",
    "cancel": "lorakit.commands.sched:cancel",
    "scheduler": "lorakit.commands.sched:scheduler",
    "run-parallel": "lorakit.commands.sched:run_parallel",
    "serve": "lorakit.commands.serve:serve",
    "env": "lorakit.commands.env:env",
    "reproduce": "lorakit.commands.reproduce:reproduce",
    "sweep": "lorakit.commands.sweep:sweep",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # a command that is not built yet is not listed
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorakit")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show tracebacks for errors, and every metric name in train's summary.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Train, compare and roll back LoRA text classifiers. One config in, one experiment folder out."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


def _show_warning(
    message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """lorakit's own warnings read like its errors: one line, no source location."""
    if issubclass(category, LorakitWarning):
        click.echo(f"Warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)  # type: ignore[arg-type]


_default_showwarning = warnings.showwarning


# click's "... Did you mean '--x'?" and "... (Did you mean one of: '--a', '--b'?)"
_SUGGESTION = re.compile(r"\.? \(?Did you mean (?P<one>one of: )?(?P<names>.*?)\??\)?$")


def usage_line(exc: click.UsageError, args: list[str] | None = None) -> str:
    """``lorakit: <command>: <problem> (see --help)``: click's usage errors in one line, not three."""
    ctx = exc.ctx
    command = (ctx.command_path if ctx is not None else "lorakit").removeprefix("lorakit").strip()
    if not command and args:  # some parser errors carry no context: the command is the first word
        command = next((a for a in args if not a.startswith("-")), "")
        command = command if command in COMMANDS else ""
    problem = " ".join(exc.format_message().split()).rstrip(".")
    problem = problem[:1].lower() + problem[1:]
    suggestion = _SUGGESTION.search(problem)
    if suggestion:
        problem = (
            problem[: suggestion.start()] + f" (did you mean {suggestion['one'] or ''}{suggestion['names']}?)"
        )
    elif problem.startswith("no such command ") and ctx is not None and isinstance(ctx.command, click.Group):
        name = problem.removeprefix("no such command ").strip("'")
        problem += did_you_mean(name, ctx.command.list_commands(ctx))
    where = f"{command}: " if command else ""
    see = f"lorakit {command} --help" if command else "lorakit --help"
    return f"lorakit: {where}{problem} (see {see})"


def main(argv: list[str] | None = None) -> Any:
    """Entry point: user errors print one line each on stderr and exit with code 2."""
    warnings.showwarning = _show_warning
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        return cli.main(args=args, prog_name="lorakit", standalone_mode=False)
    except click.exceptions.Abort:
        from .conventions import INTERRUPTED_EXIT

        click.echo("Aborted!", err=True)
        sys.exit(INTERRUPTED_EXIT)
    except click.UsageError as exc:
        click.echo(usage_line(exc, args), err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except LorakitError as exc:
        if verbose:
            traceback.print_exc()
        for line in exc.lines():
            click.echo(f"Error: {line}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:  # a fault of the machine, or a path that is not there: one line, exit 2
        problem = machine_problem(exc)
        if isinstance(exc, FileNotFoundError) and exc.filename is not None:
            problem = f"{exc.filename}: no such file or directory"
        if problem is None or verbose:
            raise
        click.echo(f"Error: {problem}", err=True)
        sys.exit(2)
