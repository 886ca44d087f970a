"""Executors: ``local`` (the default: cells one after the other on this machine) and ``ray`` (cells
as Ray tasks on this machine's devices or a Ray cluster; needs the ``ray`` extra). docs/executors.md."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench.run.local import LocalExecutor
from ddbench_executors.ray_executor import RayExecutor


@hookimpl
def ddbench_register_executors(register: Callable[[type], None]) -> None:
    for executor in (LocalExecutor, RayExecutor):
        register(executor)
