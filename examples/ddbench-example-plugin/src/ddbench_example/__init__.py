"""An example third-party ddbench plugin: registers the ``class-means`` distiller."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_example.class_means import ClassMeans


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    register(ClassMeans)
