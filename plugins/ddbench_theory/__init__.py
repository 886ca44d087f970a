"""The two-layer multi-index family (docs/theory.md): its task, its learner, its distillers.

Registers the ``multi-index`` task (:mod:`ddbench_theory.task`, with its evaluator-side references
in :mod:`ddbench_theory.references`), the ``two-layer`` learner (:mod:`ddbench_theory.two_layer`),
``two-stage`` (the distiller, :mod:`ddbench_theory.distiller`) and ``random-features`` (the
no-feature-learning reference row, :mod:`ddbench_theory.baselines`). The scaling study
(:mod:`ddbench_theory.scaling`) is the report ``multi-index-scaling`` of ``ddbench leaderboard``
and the command ``ddbench theory-scaling``.
"""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench.hookspecs import Command, Report
from ddbench_theory.baselines import RandomFeatures
from ddbench_theory.distiller import TwoStage
from ddbench_theory.task import MultiIndex
from ddbench_theory.two_layer import TwoLayerLearner


@hookimpl
def ddbench_register_tasks(register: Callable[[type], None]) -> None:
    register(MultiIndex)


@hookimpl
def ddbench_register_learners(register: Callable[[type], None]) -> None:
    register(TwoLayerLearner)


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    for distiller in (TwoStage, RandomFeatures):
        register(distiller)


@hookimpl
def ddbench_register_commands(register: Callable[[Command], None]) -> None:
    from ddbench_theory import scaling

    register(scaling.COMMAND)


@hookimpl
def ddbench_register_reports(register: Callable[[Report], None]) -> None:
    from ddbench_theory import scaling

    register(scaling.REPORT)
