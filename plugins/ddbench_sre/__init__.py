"""The SRe2L family: ``sre2l`` (squeeze, recover, relabel) and ``dwa`` (SRe2L with directed weight
adjustment), which train students from a stored teacher (docs/methods.md §14, docs/labels.md)."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_sre.distillers import DWA, SRe2L


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    register(SRe2L)
    register(DWA)
