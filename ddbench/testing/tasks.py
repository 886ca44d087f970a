"""The conformance kit's tiny tasks (generated, no downloads) and :class:`KitTask`, a task with the
budgets a distiller must meet on it and one it cannot."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddbench.contracts.interfaces import Learner, Split, Task, TaskData, TaskView
from ddbench.contracts.recipe import Recipe
from ddbench.plugins import get_plugin_manager, instantiate, parse_named
from ddbench.run import suite
from ddbench.vocab import Budget


class TinyClassification(Task):
    """3 classes of noisy 8x8 one-channel prototypes (generated, about standardised)."""

    name = "tiny-classification"
    description = "conformance kit: 3 classes of noisy 8x8 prototypes (generated)"
    kind = "classification"
    metric = "accuracy"
    default_learner = "convnet"
    num_classes = 3
    input_shape = (1, 8, 8)

    def __init__(self, per_class: int = 20, seed: int = 0):
        self.per_class, self.seed = per_class, seed

    def load(self) -> TaskData:
        g = torch.Generator().manual_seed(self.seed)
        prototypes = torch.randn(self.num_classes, *self.input_shape, generator=g)

        def split(per_class: int) -> Split:
            y = torch.arange(self.num_classes).repeat(per_class)
            return Split(prototypes[y] + 0.5 * torch.randn(len(y), *self.input_shape, generator=g), y)

        return TaskData(split(self.per_class), split(max(1, self.per_class // 4)), split(self.per_class))

    def recipe(self, profile: str) -> Recipe:
        return Recipe(epochs=20, dsa_strategy="color_crop_cutout_scale_rotate")

    def info(self) -> dict[str, Any]:
        return {"mean": [0.0], "std": [1.0], "dsa_strategy": "color_crop_cutout_scale_rotate", "data": "image"}


class TinyRegression(Task):
    """y = relu(u^T x) + 0.1 noise for Gaussian x in 8 dimensions (generated)."""

    name = "tiny-regression"
    description = "conformance kit: 8-d single-index regression (generated)"
    kind = "regression"
    metric = "r2"
    default_learner = "two-layer"
    num_classes = None
    input_shape = (8,)

    def __init__(self, n: int = 160, seed: int = 0):
        self.n, self.seed = n, seed

    def load(self) -> TaskData:
        g = torch.Generator().manual_seed(self.seed)
        u = torch.randn(self.input_shape[0], generator=g)
        u = u / u.norm()

        def split(n: int) -> Split:
            x = torch.randn(n, *self.input_shape, generator=g)
            return Split(x, torch.relu(x @ u) + 0.1 * torch.randn(n, generator=g))

        return TaskData(split(self.n), split(max(1, self.n // 4)), split(self.n))

    def recipe(self, profile: str) -> Recipe:
        return Recipe(epochs=0, batch_size=0, options={"rho": 1.0, "ridge": 1e-3})

    def info(self) -> dict[str, Any]:
        return {"data": "vector", "d": self.input_shape[0]}


@dataclass
class KitTask:
    """A task the kit runs a distiller on: budgets it must meet and one it cannot (or ``None``).

    ``learner`` is a registered learner (``"name"`` or ``"name:k=v"``) or a :class:`Learner`;
    ``None`` means the task's ``default_learner``.
    """

    task: Task
    budgets: tuple[Budget, ...]
    impossible: Budget | None
    learner: str | Learner | None = None


def tiny_classification(budgets: Sequence[str] = ("ipc=1", "params=400"), impossible: str | None = "params=100",
                        learner: str | Learner | None = None) -> KitTask:
    """The kit's classification task; ``params=100`` is below one 65-scalar example per class."""
    return KitTask(TinyClassification(), tuple(map(Budget.parse, budgets)), _budget(impossible), learner)


def tiny_regression(budgets: Sequence[str] = ("params=90",), impossible: str | None = "params=5",
                    learner: str | Learner | None = None) -> KitTask:
    """The kit's regression task; ``params=5`` is below one 9-scalar example."""
    return KitTask(TinyRegression(), tuple(map(Budget.parse, budgets)), _budget(impossible), learner)


def registered_task(spec: str, budgets: Sequence[str], impossible: str | None = None,
                    learner: str | Learner | None = None, profile: str = "quick") -> KitTask:
    """A task from the installed plugins, e.g. ``registered_task("multi-index:d=8,r=1,n=400", ["params=90"])``."""
    name, options = parse_named(spec)
    task = instantiate(get_plugin_manager().tasks.get(name), options, profile)
    return KitTask(task, tuple(map(Budget.parse, budgets)), _budget(impossible), learner)


def _budget(text: str | None) -> Budget | None:
    return None if text is None else Budget.parse(text)


def task_view(task: Task, device: torch.device | str = "cpu") -> TaskView:
    """What a distiller sees of ``task`` (train and validation on ``device``), as the harness builds it."""
    return suite.task_view(task, task.load(), device)
