"""Built-in image tasks: digits, mnist5k, mnist1d (embedded or generated) and the torchvision sets."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_tasks.images import TORCHVISION_TASKS, Digits, Mnist1d, Mnist5k


@hookimpl
def ddbench_register_tasks(register: Callable[[type], None]) -> None:
    for task in (Digits, Mnist5k, Mnist1d, *TORCHVISION_TASKS):
        register(task)
