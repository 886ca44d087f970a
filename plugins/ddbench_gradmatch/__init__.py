"""Gradient and distribution matching distillers: ``dc``, ``dsa`` and ``dm`` (docs/methods.md §4-§6)."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench.contracts.hookspecs import Command
from ddbench_gradmatch.dc import DCDistiller, DSADistiller
from ddbench_gradmatch.dm import DMDistiller


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    for distiller in (DCDistiller, DSADistiller, DMDistiller):
        register(distiller)


@hookimpl
def ddbench_register_commands(register: Callable[[Command], None]) -> None:
    from ddbench_gradmatch import timing

    register(timing.COMMAND)
