"""Built-in image tasks: digits, mnist5k, mnist1d (embedded or generated) and the datasets read from
their own distribution files under a data root (MNIST, Fashion-MNIST, CIFAR-10/100, SVHN,
Tiny-ImageNet, MTT's ImageNet subsets, ImageNet-1K)."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_tasks.files import FILE_TASKS
from ddbench_tasks.imagenet import IMAGENET_TASKS
from ddbench_tasks.images import Digits, Mnist1d, Mnist5k


@hookimpl
def ddbench_register_tasks(register: Callable[[type], None]) -> None:
    for task in (Digits, Mnist5k, Mnist1d, *FILE_TASKS, *IMAGENET_TASKS):
        register(task)
