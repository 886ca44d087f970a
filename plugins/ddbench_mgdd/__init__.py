"""MGDD: a meta-learned conditional generator for fast dataset distillation (docs/methods.md §16)."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_mgdd.distiller import MGDD


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    register(MGDD)
