"""The hooks a ddbench plugin may implement. Every hook is named ``ddbench_*``.

A plugin is a module (or object) with functions decorated by :data:`ddbench.hookimpl`, exposed
through the ``ddbench`` entry-point group::

    [project.entry-points.ddbench]
    my_plugin = "my_package.plugin"

Each registration hook receives a ``register`` callback. ``register(cls)`` validates ``cls``
against its interface (see :mod:`ddbench.contracts.interfaces`) at once and rejects duplicate names, so a
broken plugin fails at load time with an error that names it, not halfway through a run.

Two more hooks extend the tools around a run: ``ddbench_register_commands`` adds ``ddbench``
subcommands (:class:`Command`), ``ddbench_register_reports`` adds reports that ``ddbench
leaderboard`` writes beside the generic boards (:class:`Report`). Their ``register`` takes one
of these objects and checks it the same way.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("ddbench")
hookimpl = pluggy.HookimplMarker("ddbench")
"""Decorate a plugin's ``ddbench_*`` functions with this (also importable as ``ddbench.hookimpl``)."""


@dataclass(frozen=True)
class Command:
    """A ``ddbench NAME`` subcommand added by a plugin (:func:`ddbench_register_commands`).

    ``arguments(parser)`` adds its flags to its ``argparse`` parser; ``run(args)`` does the work
    and returns the exit status (``None``: 0). A :class:`ddbench.errors.DDBenchError` it raises is
    printed as one line with exit status 2, as for the built-in commands.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], int | None]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    description: str = ""


@dataclass(frozen=True)
class Report:
    """A report that ``ddbench leaderboard`` writes beside the generic boards (:func:`ddbench_register_reports`).

    ``write(records, out)`` gets the stored records being published (dictionaries, see
    :mod:`ddbench.results.records`) and the output folder, writes its files there and returns their
    paths; a report with nothing to say about these records writes nothing and returns ``[]``.
    """

    name: str
    write: Callable[[list[dict[str, Any]], Path], list[Path]]
    description: str = ""


@hookspec
def ddbench_register_tasks(register: Callable[[type], None]) -> None:
    """Register task classes (subclasses of :class:`ddbench.contracts.interfaces.Task`).

    Called once, when the plugin manager loads plugins.

    :param register: call ``register(TaskClass)`` for each task; the class attribute ``name`` is
        its public name and its constructor's keyword arguments are its options.
    """


@hookspec
def ddbench_register_learners(register: Callable[[type], None]) -> None:
    """Register learner classes (subclasses of :class:`ddbench.contracts.interfaces.Learner`).

    Called once, when the plugin manager loads plugins.

    :param register: call ``register(LearnerClass)`` for each learner; the class attribute
        ``name`` is its public name and its constructor's keyword arguments are its options.
    """


@hookspec
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    """Register distiller classes (subclasses of :class:`ddbench.contracts.interfaces.Distiller`).

    Called once, when the plugin manager loads plugins.

    :param register: call ``register(DistillerClass)`` for each distiller; the class attribute
        ``name`` is its public name and its constructor's keyword arguments (hyperparameters, each
        defaulting to the published value) are its options.
    """


@hookspec
def ddbench_register_analyses(register: Callable[[type], None]) -> None:
    """Register analysis classes (subclasses of :class:`ddbench.contracts.analysis.Analysis`).

    Called once, when the plugin manager loads plugins.

    :param register: call ``register(AnalysisClass)`` for each analysis; the class attribute
        ``name`` is its public name (what ``ddbench analyze --analysis NAME`` and a suite's
        ``analyses`` select), ``version`` and ``metrics`` declare its outputs, and its constructor's
        keyword arguments (``size``, ``protocol`` and its own settings) are its options.
    """


@hookspec
def ddbench_register_executors(register: Callable[[type], None]) -> None:
    """Register executor classes (subclasses of :class:`ddbench.contracts.executor.Executor`).

    Called once, when the plugin manager loads plugins.

    :param register: call ``register(ExecutorClass)`` for each executor; the class attribute
        ``name`` is its public name (what ``ddbench run --executor NAME`` selects) and its
        constructor's keyword arguments are its options.
    """


# --------------------------------------------------------------------------------------------
# The command line and reports
# --------------------------------------------------------------------------------------------
@hookspec
def ddbench_register_commands(register: Callable[[Command], None]) -> None:
    """Register ``ddbench`` subcommands (:class:`Command` objects).

    Called once per plugin each time the command line builds its parser (every ``ddbench`` call).

    :param register: call ``register(Command(name, help, run, arguments))`` for each subcommand;
        ``name`` must be unique among ddbench's own commands and every plugin's.
    """


@hookspec
def ddbench_register_reports(register: Callable[[Report], None]) -> None:
    """Register reports (:class:`Report` objects) that ``ddbench leaderboard`` writes beside its boards.

    Called once per plugin each time ``ddbench leaderboard`` runs, before it writes.

    :param register: call ``register(Report(name, write))`` for each report; ``name`` is what
        ``ddbench leaderboard --report NAME`` selects and must be unique.
    """
