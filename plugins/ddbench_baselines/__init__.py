"""Baseline distillers: ``random`` real subsets, ``herding`` coresets and the ``full`` reference."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_baselines.coresets import Full, Herding, Random


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    for distiller in (Random, Herding, Full):
        register(distiller)
