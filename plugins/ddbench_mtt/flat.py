"""A learner's network as a pure function of one flat parameter vector (``docs/methods.md`` §7).

Experts and the student share this layout, so an expert snapshot *is* a student starting point.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call


class FlatModel:
    """``model(flat, x)``: ``module``'s forward with its parameters read as views of ``flat``.

    The module must have no buffers (running statistics would be state outside the vector):
    ConvNet-3 with instance norm qualifies; a BatchNorm variant does not.
    """

    def __init__(self, module: nn.Module):
        buffers = [name for name, _ in module.named_buffers()]
        if buffers:
            raise ValueError(
                f"mtt needs a network whose state is all parameters, but it has buffers {buffers[:3]}: "
                "use a learner without BatchNorm (e.g. convnet with norm=instancenorm)."
            )
        self.module = module
        named = list(module.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [math.prod(s) for s in self.shapes]

    @property
    def size(self) -> int:
        """Number of parameters P (length of the flat vector)."""
        return sum(self.numels)

    def flatten(self, module: nn.Module | None = None) -> Tensor:
        """The parameters of ``module`` (default: this one) as one detached flat vector."""
        module = self.module if module is None else module
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Name -> view of ``flat`` with the parameter's shape (no copy)."""
        parts = torch.split(flat, self.numels)
        return {name: part.view(shape) for name, part, shape in zip(self.names, parts, self.shapes)}

    def __call__(self, flat: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.module, self.unflatten(flat), (x,))
