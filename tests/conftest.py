"""Shared fixtures: the plugin manager, a CPU harness and task views at small sizes."""
from __future__ import annotations

import pytest
import torch

from ddbench.harness import Harness
from ddbench.plugins import get_plugin_manager


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
def _threads():
    torch.set_num_threads(2)
    yield
