"""Subsets of real training examples: the seeded, class-balanced random subset.

It is the ``random`` baseline's artifact, the harness's reference for "gain vs random", and the
initialisation of methods that start from real images (MTT, docs/methods.md §7).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ddbench.contracts.interfaces import Artifact, TaskView
from ddbench.errors import BudgetError
from ddbench.vocab import Budget


def random_subset(task: TaskView, budget: Budget, generator: torch.Generator) -> Tensor:
    """Indices of a seeded random subset: ``ipc`` per class (classification) or as many points as
    the budget holds (regression)."""
    device = task.train.y.device
    if task.num_classes is None:
        m = min(budget.examples(task), len(task.train))
        if m < 1:
            raise BudgetError(f"budget {budget} holds no (input, target) pair of task {task.name!r} "
                              f"({task.input_size + 1} scalars each): raise it.")
        return torch.randperm(len(task.train), generator=generator, device=device)[:m]
    return task.balanced_index(budget.ipc(task), generator)


def random_artifact(task: TaskView, budget: Budget, seed: int) -> Artifact:
    """The random subset for ``seed`` as an artifact: what the ``random`` baseline distils, drawn
    from a generator on the task's device seeded with ``seed`` (as a cell's ``RunContext``)."""
    generator = torch.Generator(task.train.y.device).manual_seed(seed)
    idx = random_subset(task, budget, generator)
    return Artifact({"x": task.train.take(idx).clone(), "y": task.train.y[idx].clone()})
