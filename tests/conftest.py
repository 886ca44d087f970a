"""Shared fixtures: the plugin manager, a CPU harness and task views at small sizes; and the
benchmarks' mode: each ``tests/benchmarks/bench_*.py`` body runs once, as a plain test, unless
``--benchmark-enable`` or ``--benchmark-only`` is given (or pytest-benchmark is not installed), and
the sizes marked ``measure`` run only then."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from ddbench.plugins import get_plugin_manager
from ddbench.run.harness import Harness


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Benchmarks untimed unless asked for (set before pytest-benchmark's own pytest_configure reads
    the option), and timed in one process; without pytest-benchmark, a ``benchmark`` fixture that
    calls the body once."""
    if not config.pluginmanager.hasplugin("benchmark"):
        config.pluginmanager.register(_RunOnceFixture(), "ddbench-tests-benchmark-fallback")
    elif not _measuring(config):
        config.option.benchmark_disable = True
    elif config.pluginmanager.hasplugin("xdist"):
        config.option.numprocesses, config.option.dist = 0, "no"  # timing in one process: pytest-benchmark times nothing under xdist


def _measuring(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("benchmark") and bool(
        config.getoption("benchmark_enable") or config.getoption("benchmark_only"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``measure`` sizes of a benchmark grid unless benchmarks are timed: as plain tests
    they would run the code of their smaller neighbours again, only longer."""
    if _measuring(config):
        return
    deselected = [item for item in items if item.get_closest_marker("measure")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("measure")]


class _RunOnce:
    """What a benchmark body sees where pytest-benchmark is not installed: its function called once."""

    def __init__(self) -> None:
        self.extra_info: dict[str, Any] = {}

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    def pedantic(self, target: Callable[..., Any], args: tuple = (), kwargs: dict[str, Any] | None = None, **_: Any) -> Any:
        return target(*args, **(kwargs or {}))


class _RunOnceFixture:
    @pytest.fixture
    def benchmark(self) -> _RunOnce:
        return _RunOnce()


@pytest.fixture(scope="session")
def manager():
    return get_plugin_manager()


@pytest.fixture(scope="session")
def harness(manager, tmp_path_factory):
    return Harness(manager, "cpu", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits(harness):
    """(task, view, test) of the digits task in the quick profile."""
    return harness.task("digits", {}, "quick")


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    """One torch thread per test: the lanes run on every core at once (pytest-xdist, ``-n auto``),
    and every cell a harness runs computes with one thread anyway (``Harness.threads``)."""
    torch.set_num_threads(1)
    yield


DC_ARGS = ["--task", "digits:epochs=5", "--distiller", "dc:iterations=20", "--budget", "ipc=1", "--seeds", "1", "--device", "cpu"]
"""A dc cell of a few seconds whose distillation checkpoints (tests/test_resume.py, tests/test_executors.py)."""


@pytest.fixture(scope="session")
def dc_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run of :data:`DC_ARGS` at one thread: its artifact's bytes and its record."""
    import json
    import os
    import sqlite3
    from pathlib import Path

    from ddbench.cli import main

    folder, here = tmp_path_factory.mktemp("dc-reference"), Path.cwd()
    os.chdir(folder)
    try:
        assert main(["run", *DC_ARGS, "--threads", "1", "--store", "ref.sqlite", "--save-artifacts", "ref"]) == 0
    finally:
        os.chdir(here)
    (artifact,) = (folder / "ref").glob("*.safetensors")
    with sqlite3.connect(folder / "ref.sqlite") as db:
        (row,) = db.execute("SELECT result FROM cells").fetchall()
    return {"name": artifact.name, "bytes": artifact.read_bytes(), "record": json.loads(row[0])}
