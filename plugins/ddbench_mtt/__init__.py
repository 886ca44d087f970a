"""Trajectory matching: the ``mtt`` distiller (``docs/methods.md`` §7, §8) and ``seqmatch`` over it (§15)."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench.contracts.hookspecs import Command
from ddbench_mtt.distiller import MTT
from ddbench_mtt.seqmatch import SeqMatch


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    register(MTT)
    register(SeqMatch)


@hookimpl
def ddbench_register_commands(register: Callable[[Command], None]) -> None:
    from ddbench_mtt import measure

    register(measure.COMMAND)
