"""The exceptions ddbench raises. Each message is one line that names the thing and the fix."""
from __future__ import annotations

import difflib
import sys
import warnings
from collections.abc import Iterable
from typing import Any, TextIO


class DDBenchError(Exception):
    """Base class: a user-facing error whose message is a single actionable line."""


class UnknownNameError(DDBenchError, KeyError):
    """A task, learner, distiller or option name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class PluginError(DDBenchError):
    """A plugin failed to import, registered something invalid, or misspelt a hook."""


class BudgetError(DDBenchError):
    """A malformed budget, or an artifact that exceeds its budget."""


class NotApplicable(DDBenchError):  # noqa: N818 - a skip, not an error; the public name plugins raise
    """Raised by ``Distiller.distill`` when the method does not apply at the cell's budget, which
    ``supports`` cannot see (e.g. one image per class cannot be split into stages): the cell is
    skipped with this message, not failed."""


class ArtifactError(DDBenchError):
    """An artifact with non-finite values, wrong shapes or an unsafe file format."""


class SuiteError(DDBenchError):
    """A malformed suite file or command line combination."""


class StoreError(DDBenchError):
    """A results store or results file that is missing, unreadable or not ddbench's."""


class SourceError(DDBenchError):
    """A distilled set saved by other code that cannot be imported as stated (``ddbench import``)."""


class TaskDataError(DDBenchError):
    """A dataset that cannot be loaded (files absent, download off or failed)."""


class DDBenchWarning(UserWarning):
    """Something worth a line on stderr that does not stop the command (printed as one: :func:`show_warning`)."""


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
                 line: str | None = None) -> None:
    """A ``warnings.showwarning`` for ddbench's processes (the command line, the cell workers): a
    :class:`DDBenchWarning` as one line on stderr, ``ddbench: warning: ...``; others as Python shows them."""
    if issubclass(category, DDBenchWarning):
        print(f"ddbench: warning: {message}", file=sys.stderr)
    else:
        PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


PYTHON_SHOWWARNING: Any = warnings.showwarning


def one_line(exc: BaseException) -> str:
    """The line a failed cell records: a ddbench error's own message, else the exception's type and
    first line (a ``SystemExit`` says where it came from)."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, DDBenchError):
        return message
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) raised inside the distiller (sys.exit in a plugin?)"
    return f"{type(exc).__name__}: {message}"


def close_names(name: str, choices: Iterable[str]) -> str:
    """' Did you mean: a, b?' for near misses of ``name`` among ``choices``, else ''."""
    matches = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


def unknown(kind: str, name: str, choices: Iterable[str], hint: str = "") -> UnknownNameError:
    """Build the standard 'unknown <kind>' error with close matches and the available names."""
    choices = sorted(choices)
    hint = hint or f"Available: {', '.join(choices) or '(none)'}."
    return UnknownNameError(f"unknown {kind} {name!r}.{close_names(name, choices)} {hint}")
