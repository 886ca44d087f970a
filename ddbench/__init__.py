"""ddbench: a plugin-based benchmarking suite for dataset distillation.

Write a plugin with :data:`hookimpl` and the interfaces in :mod:`ddbench.interfaces`; the hooks
are in :mod:`ddbench.hookspecs`, the harness loop in :mod:`ddbench.harness`.
"""
from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

from ddbench.hookspecs import hookimpl

try:
    __version__ = metadata.version("ddbench")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from ddbench.interfaces import (
        Artifact,
        Budget,
        Deviation,
        Distiller,
        Learner,
        Progress,
        Published,
        Recipe,
        RunContext,
        Split,
        Task,
        TaskData,
        TaskView,
    )

_INTERFACES = ("Artifact", "Budget", "Deviation", "Distiller", "Learner", "Progress", "Published", "Recipe", "RunContext", "Split",
               "Task", "TaskData", "TaskView")

__all__ = [*_INTERFACES, "hookimpl", "__version__"]


def __getattr__(name: str) -> Any:
    """The interface classes of :mod:`ddbench.interfaces`, imported on first use: importing a
    submodule that needs no torch (the conformance kit's pytest plugin, loaded by every pytest run)
    does not import it."""
    if name not in _INTERFACES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module("ddbench.interfaces"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
