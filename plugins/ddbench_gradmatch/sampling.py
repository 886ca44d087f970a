"""Per-class real-image pools on the device and the synthetic set's initialisation (docs/methods.md §5,
§6, §13.1)."""
from __future__ import annotations

import torch
from torch import Tensor

from ddbench.contracts.interfaces import TaskView

INITS = ("real", "noise")


class ClassPools:
    """The train split's images grouped by class, sampled without host round trips.

    ``sample(n)`` returns ``(C, n, *input_shape)``: for each class, ``n`` distinct random images
    (a random-key top-k over a padded index matrix, so one call covers every class on the device).
    """

    def __init__(self, task: TaskView):
        if task.num_classes is None:
            raise ValueError(f"task {task.name!r} is regression: per-class pools need classes.")
        self.x = task.train.x
        index = [task.class_index(c) for c in range(task.num_classes)]  # setup only: syncs here are fine
        self.counts = [len(i) for i in index]
        if min(self.counts) == 0:
            empty = self.counts.index(0)
            raise ValueError(f"class {empty} of task {task.name!r} has no train images: every class needs at least one.")
        width = max(self.counts)
        self.index = torch.stack([torch.cat([i, i.new_zeros(width - len(i))]) for i in index])
        self.padding = torch.stack([torch.arange(width, device=self.x.device) >= n for n in self.counts])
        self.classes = task.num_classes

    @property
    def smallest(self) -> int:
        """Images in the smallest class: the most one ``sample`` call can draw per class."""
        return min(self.counts)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        if not 0 < n <= self.smallest:
            raise ValueError(f"cannot draw {n} distinct images per class: the smallest class has {self.smallest}.")
        keys = torch.rand(self.index.shape, generator=generator, device=self.index.device).masked_fill(self.padding, 2.0)
        picks = keys.topk(n, dim=1, largest=False).indices
        return self.x[torch.gather(self.index, 1, picks)]


def initial_images(pools: ClassPools, ipc: int, init: str, generator: torch.Generator) -> Tensor:
    """The synthetic set's start, ``ipc`` rows per class in class order: random real images of
    each class (``real``) or N(0, 1) noise in the normalised input space (``noise``, DC's default)."""
    if init == "real":
        return pools.sample(ipc, generator).flatten(0, 1).clone()
    if init == "noise":
        shape = (pools.classes * ipc, *pools.x.shape[1:])
        return torch.randn(shape, generator=generator, device=pools.x.device, dtype=pools.x.dtype)
    raise ValueError(f"unknown init {init!r}: use one of {INITS}.")
