"""The two-layer multi-index dataset distillation algorithm (specs/theory.md) and its references.

Registers ``two-stage`` (the distiller, :mod:`ddbench_theory.distiller`) and ``random-features``
(the no-feature-learning reference row, :mod:`ddbench_theory.baselines`). The scaling study's
analysis is ``python -m ddbench_theory.scaling`` (:mod:`ddbench_theory.scaling`).
"""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_theory.baselines import RandomFeatures
from ddbench_theory.distiller import TwoStage


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    for distiller in (TwoStage, RandomFeatures):
        register(distiller)
