"""Baseline distillers: ``random`` real subsets, ``herding`` coresets, the ``full`` reference and
``file``, a saved or imported artifact scored as it is."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_baselines.coresets import Full, Herding, Random
from ddbench_baselines.imported import File


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    for distiller in (Random, Herding, Full, File):
        register(distiller)
