"""The hooks a ddbench plugin may implement. Every hook is named ``ddbench_*``.

A plugin is a module (or object) with functions decorated by :data:`ddbench.hookimpl`, exposed
through the ``ddbench`` entry-point group::

    [project.entry-points.ddbench]
    my_plugin = "my_package.plugin"

Each registration hook receives a ``register`` callback. ``register(cls)`` validates ``cls``
against its interface (see :mod:`ddbench.interfaces`) at once and rejects duplicate names, so a
broken plugin fails at load time with an error that names it, not halfway through a run.
"""
from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("ddbench")


@hookspec
def ddbench_register_tasks(register: Callable[[type], None]) -> None:
    """Register task classes (subclasses of :class:`ddbench.interfaces.Task`).

    Called once, when the plugin manager loads plugins.

    :param register: call ``register(TaskClass)`` for each task; the class attribute ``name`` is
        its public name and its constructor's keyword arguments are its options.
    """


@hookspec
def ddbench_register_learners(register: Callable[[type], None]) -> None:
    """Register learner classes (subclasses of :class:`ddbench.interfaces.Learner`).

    Called once, when the plugin manager loads plugins.

    :param register: call ``register(LearnerClass)`` for each learner; the class attribute
        ``name`` is its public name and its constructor's keyword arguments are its options.
    """


@hookspec
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    """Register distiller classes (subclasses of :class:`ddbench.interfaces.Distiller`).

    Called once, when the plugin manager loads plugins.

    :param register: call ``register(DistillerClass)`` for each distiller; the class attribute
        ``name`` is its public name and its constructor's keyword arguments (hyperparameters, each
        defaulting to the published value) are its options.
    """
