"""Trajectory matching: the ``mtt`` distiller (``specs/methods.md`` §7, §8)."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_mtt.distiller import MTT


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    register(MTT)
