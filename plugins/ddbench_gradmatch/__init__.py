"""Gradient and distribution matching distillers: ``dc``, ``dsa`` and ``dm`` (specs/methods.md §4-§6)."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_gradmatch.dc import DCDistiller, DSADistiller
from ddbench_gradmatch.dm import DMDistiller


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    for distiller in (DCDistiller, DSADistiller, DMDistiller):
        register(distiller)
