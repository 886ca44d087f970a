"""The two-layer multi-index family (docs/theory.md): its task, its learner, its distillers.

Registers the ``multi-index`` task (:mod:`ddbench_theory.task`, with its evaluator-side references
in :mod:`ddbench_theory.references`), the ``two-layer`` learner (:mod:`ddbench_theory.two_layer`),
``two-stage`` (the distiller, :mod:`ddbench_theory.distiller`) and ``random-features`` (the
no-feature-learning reference row, :mod:`ddbench_theory.baselines`), and two commands: ``ddbench
theory-study``, the memory study of docs/theory.md §7 (:mod:`ddbench_theory.study`, which searches
B* with :mod:`ddbench_theory.search`, fits it with :mod:`ddbench_theory.fits` and writes the board
with :mod:`ddbench_theory.board`), and ``ddbench theory-measure``, one cell at GPU scale with the
real data streamed (:mod:`ddbench_theory.measure`, :mod:`ddbench_theory.streaming`); and the
study's board as the report ``theory-study``, which ``ddbench leaderboard`` rewrites from its JSON.
"""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench.contracts.hookspecs import Command, Report
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
    from ddbench_theory import measure, study

    register(study.COMMAND)
    register(measure.COMMAND)


@hookimpl
def ddbench_register_reports(register: Callable[[Report], None]) -> None:
    from ddbench_theory import board

    register(board.REPORT)
