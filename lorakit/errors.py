"""Errors a user can fix. The CLI prints them as one line each and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LorakitError(Exception):
    """Base class for every error a user can fix (bad config, bad data, missing plugin...)."""

    exit_code = 2

    def lines(self) -> list[str]:
        """The message as the CLI prints it: one line per problem."""
        return [str(self)]


class ConfigError(LorakitError):
    """One or more problems with a config, each as ``key: problem (file)``."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))

    def lines(self) -> list[str]:
        return list(self.problems)


class DataError(LorakitError):
    """A problem with input data: a missing column, an unknown label, undecodable bytes."""


class PluginError(LorakitError):
    """A plugin is missing, clashes with another, or registered something invalid."""


class ResumeError(LorakitError):
    """A run cannot be resumed (or would be overwritten) as asked."""


class DamagedFile(LorakitError):
    """A file lorakit wrote and reads back is missing, truncated, mistyped or foreign: ``<path>: damaged (<reason>)``."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: damaged ({reason})")


class MachineError(LorakitError):
    """The machine refused a file operation (disk full, read-only, permission, FIFO...): ``<path>: <problem>``."""


class LorakitWarning(UserWarning):
    """Something the user should know that does not stop the command (a rebuilt cache, a rebuilt index)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``' (did you mean X?)'`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
