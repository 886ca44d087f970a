"""Built-in tasks: multi-index (synthetic regression), digits, mnist5k, mnist1d and torchvision sets."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_tasks.images import Digits, Mnist1d, Mnist5k, TORCHVISION_TASKS
from ddbench_tasks.multi_index import MultiIndex


@hookimpl
def ddbench_register_tasks(register: Callable[[type], None]) -> None:
    for task in (MultiIndex, Digits, Mnist5k, Mnist1d, *TORCHVISION_TASKS):
        register(task)
