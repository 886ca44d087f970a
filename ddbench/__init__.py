"""ddbench: a plugin-based benchmarking suite for dataset distillation.

Write a plugin with :data:`hookimpl` and the interfaces in :mod:`ddbench.contracts.interfaces`; the hooks
are in :mod:`ddbench.contracts.hookspecs`, the harness loop in :mod:`ddbench.run.harness`.
"""
from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

from ddbench.contracts.hookspecs import hookimpl

try:
    __version__ = metadata.version("ddbench")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from ddbench.contracts.deviations import Deviation
    from ddbench.contracts.interfaces import Artifact, Distiller, Learner, Progress, Published, RunContext, Split, Task, TaskData, TaskView
    from ddbench.contracts.recipe import Recipe
    from ddbench.vocab import Budget

_HOMES = {"Budget": "ddbench.vocab", "Deviation": "ddbench.contracts.deviations", "Recipe": "ddbench.contracts.recipe",
          **dict.fromkeys(("Artifact", "Distiller", "Learner", "Progress", "Published", "RunContext", "Split", "Task", "TaskData",
                           "TaskView"), "ddbench.contracts.interfaces")}

# Written out (not computed from _HOMES) so that linters and type checkers see the public names.
__all__ = ["Artifact", "Budget", "Deviation", "Distiller", "Learner", "Progress", "Published", "Recipe", "RunContext", "Split", "Task",
           "TaskData", "TaskView", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    """The public classes, imported on first use from their homes: importing a submodule that needs
    no torch (the conformance kit's pytest plugin, loaded by every pytest run) does not import it."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
