"""The ``class-means`` distiller: every stored example is the mean of a random group of real
examples of one class."""
from __future__ import annotations

import torch

from ddbench import Artifact, Budget, Distiller, Learner, RunContext, TaskView


class ClassMeans(Distiller):
    """Split each class's training examples into ``ipc`` random groups of near-equal size (a
    permutation drawn from the run's seed) and store each group's mean with the class label.

    ``ipc = 1`` stores the class means. A class with fewer than ``ipc`` examples stores them all.
    """

    name = "class-means"
    description = "means of ipc random same-class groups (example third-party plugin)"

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        return None if task.num_classes is not None else "class-means averages within classes; the task is regression"

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        ipc = budget.ipc(task)  # raises BudgetError below one example per class
        xs, ys = [], []
        for c in range(task.num_classes):  # type: ignore[arg-type]  # supports() rules out regression
            members = task.class_index(c)
            groups = min(ipc, len(members))
            order = members[torch.randperm(len(members), generator=context.generator, device=context.device)]
            group = torch.arange(len(order), device=context.device) * groups // len(order)
            x = task.train.x[order]
            sums = torch.zeros(groups, *x.shape[1:], dtype=x.dtype, device=context.device).index_add_(0, group, x)
            counts = torch.bincount(group, minlength=groups).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
            xs.append(sums / counts)
            ys.append(torch.full((groups,), c, dtype=torch.long, device=context.device))
            context.progress.update(c + 1, task.num_classes)
        return Artifact({"x": torch.cat(xs), "y": torch.cat(ys)}, meta={"groups_per_class": ipc})
