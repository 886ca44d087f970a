"""The conformance kit's pytest plugin: ``--ddbench-device`` and the ``ddbench_*`` fixtures.

pytest loads it in every run where ddbench is installed (entry point ``pytest11: ddbench``), so it
imports nothing heavy: torch and the kit are imported when a ``ddbench_*`` fixture is first used.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

    from ddbench.contracts.interfaces import RunContext, TaskView
    from ddbench.testing.report import ConformanceReport


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ddbench", "ddbench conformance kit")
    group.addoption("--ddbench-device", default="cpu", metavar="DEVICE",
                    help="device the ddbench conformance kit runs distillers on: cpu (default), cuda[:N] or auto")


@pytest.fixture
def ddbench_device(request: pytest.FixtureRequest) -> torch.device:
    """The device of ``--ddbench-device`` (cpu unless given)."""
    from ddbench.ops.device import resolve_device

    return resolve_device(request.config.getoption("ddbench_device"))


@pytest.fixture
def ddbench_check(ddbench_device: torch.device, tmp_path: Path) -> Callable[..., ConformanceReport]:
    """:func:`~ddbench.testing.check_distiller` on ``--ddbench-device`` with a temporary cache folder."""
    from ddbench.testing.checks import check_distiller

    return functools.partial(check_distiller, device=ddbench_device, cache_dir=tmp_path / "ddbench-cache")


@pytest.fixture
def ddbench_context(ddbench_device: torch.device, tmp_path: Path) -> RunContext:
    """A fresh quick-profile :class:`~ddbench.RunContext` (seed 0) for an author's own unit tests; its
    ``source_view`` reads the installed plugins' tasks."""
    import torch

    from ddbench.contracts.interfaces import Progress, RunContext
    from ddbench.plugins import get_plugin_manager
    from ddbench.run.suite import view_opener

    return RunContext(ddbench_device, 0, torch.Generator(ddbench_device).manual_seed(0), Progress(), "quick",
                      None, tmp_path / "ddbench-cache", open_view=view_opener(get_plugin_manager(), "quick", ddbench_device))


@pytest.fixture
def ddbench_tiny_classification(ddbench_device: torch.device) -> TaskView:
    """The kit's 3-class 8x8 task as a distiller sees it, on ``--ddbench-device``."""
    from ddbench.testing.tasks import TinyClassification, task_view

    return task_view(TinyClassification(), ddbench_device)


@pytest.fixture
def ddbench_tiny_regression(ddbench_device: torch.device) -> TaskView:
    """The kit's 8-d regression task as a distiller sees it, on ``--ddbench-device``."""
    from ddbench.testing.tasks import TinyRegression, task_view

    return task_view(TinyRegression(), ddbench_device)
