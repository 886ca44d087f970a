"""The conformance kit: check a distiller against ddbench's interface and budget rules.

A pytest plugin (registered under the ``pytest11`` entry-point group, so installing ddbench is
enough) and plain functions. A plugin author checks a distiller in a few lines::

    from my_plugin import MyDistiller

    def test_conformance(ddbench_check):
        ddbench_check(MyDistiller)          # raises ConformanceError naming every broken rule

:func:`check_distiller` runs the distiller on tiny tasks that ship with the kit (no downloads): a
3-class 8x8 image task and an 8-dimensional regression task. Each failure names the rule (the keys
of :data:`RULES`) and how to fix it. ``pytest --ddbench-device cuda`` runs the checks on a GPU.

The package: :mod:`~ddbench.testing.tasks` (the tiny tasks and :class:`KitTask`),
:mod:`~ddbench.testing.report` (the rules and the report types), :mod:`~ddbench.testing.checks`
(the checks) and :mod:`~ddbench.testing.pytest_plugin` (the fixtures and ``--ddbench-device``).
The names below are imported on first use, so that pytest loading the plugin (a submodule of this
package) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddbench.testing.checks import SEEDED_RTOL, TRAIN_EPOCHS, check_distiller, check_registered, conformance
    from ddbench.testing.report import RULES, Case, ConformanceError, ConformanceReport, Failure
    from ddbench.testing.tasks import (
        KitTask,
        TinyClassification,
        TinyRegression,
        registered_task,
        task_view,
        tiny_classification,
        tiny_regression,
    )

_HOMES = {
    "ddbench.testing.checks": ("check_distiller", "conformance", "check_registered", "TRAIN_EPOCHS", "SEEDED_RTOL"),
    "ddbench.testing.report": ("RULES", "Failure", "Case", "ConformanceReport", "ConformanceError"),
    "ddbench.testing.tasks": ("TinyClassification", "TinyRegression", "KitTask", "tiny_classification", "tiny_regression",
                              "registered_task", "task_view"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

# Written out (not computed from _HOMES) so that linters and type checkers see the public names.
__all__ = ["RULES", "SEEDED_RTOL", "TRAIN_EPOCHS", "Case", "ConformanceError", "ConformanceReport", "Failure", "KitTask",
           "TinyClassification", "TinyRegression", "check_distiller", "check_registered", "conformance", "registered_task", "task_view",
           "tiny_classification", "tiny_regression"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
