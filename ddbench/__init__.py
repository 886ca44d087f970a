"""ddbench: a plugin-based benchmarking suite for dataset distillation.

Write a plugin with :data:`hookimpl` and the interfaces in :mod:`ddbench.interfaces`; the hooks
are in :mod:`ddbench.hookspecs`, the harness loop in :mod:`ddbench.harness`.
"""
from __future__ import annotations

from importlib import metadata

import pluggy

hookimpl = pluggy.HookimplMarker("ddbench")

try:
    __version__ = metadata.version("ddbench")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from ddbench.interfaces import (  # noqa: E402
    Artifact,
    Budget,
    Distiller,
    Learner,
    Progress,
    Recipe,
    RunContext,
    Split,
    Task,
    TaskData,
    TaskView,
)

__all__ = [
    "Artifact", "Budget", "Distiller", "Learner", "Progress", "Recipe", "RunContext", "Split",
    "Task", "TaskData", "TaskView", "hookimpl", "__version__",
]
