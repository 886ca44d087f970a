"""Recovering images from a teacher (docs/methods.md §14): match the teacher's BatchNorm
statistics plus cross-entropy on jittered views (SRe2L), optionally from a teacher perturbed along
its loss-ascent direction before each batch (DWA)."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class RecoverRecipe:
    """Recovery of one batch: ``steps`` Adam steps on the pixels at ``lr`` (betas ``beta1``,
    ``beta2``, cosine to zero), a random roll of up to ``jitter`` pixels each step, and loss
    cross-entropy + ``r_bn`` x the BatchNorm-statistics distance."""

    steps: int = 1000
    lr: float = 0.25
    beta1: float = 0.5
    beta2: float = 0.9
    jitter: int = 4
    r_bn: float = 0.01


class BatchNormStatistics:
    """Forward hooks on every BatchNorm layer of a model: after a forward pass, :meth:`loss` is the
    sum over layers of ||batch mean - running mean||_2 + ||batch var - running var||_2 of its input."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError("the teacher has no BatchNorm layer, whose statistics recovery matches: "
                             "use a BatchNorm teacher (resnet, or convnet:norm=batchnorm)")
        self.terms: list[Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        self.terms.append(torch.linalg.vector_norm(mean - module.running_mean, 2)
                          + torch.linalg.vector_norm(var - module.running_var, 2))

    def loss(self) -> Tensor:
        total = torch.stack(self.terms).sum()
        self.terms = []
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def roll_jitter(x: Tensor, jitter: int, generator: torch.Generator) -> Tensor:
    """``x`` rolled by one random offset in [-jitter, jitter] along each spatial axis (the whole batch)."""
    if jitter <= 0:
        return x
    dx, dy = torch.randint(-jitter, jitter + 1, (2,), generator=generator, device=generator.device).tolist()
    return torch.roll(x, shifts=(dx, dy), dims=(-1, -2))


def recover(teacher: nn.Module, x0: Tensor, y: Tensor, recipe: RecoverRecipe, generator: torch.Generator,
            bounds: tuple[Tensor, Tensor] | None = None, on_step: Callable[[int, float], None] | None = None) -> Tensor:
    """Images optimised from ``x0`` so that the (eval-mode) teacher classifies them as ``y`` and its
    BatchNorm layers see their running statistics; pixels clamped to ``bounds`` after every step."""
    teacher.eval()
    stats = BatchNormStatistics(teacher)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=recipe.lr, betas=(recipe.beta1, recipe.beta2))
    try:
        for step in range(recipe.steps):
            for group in opt.param_groups:
                group["lr"] = 0.5 * recipe.lr * (1 + math.cos(math.pi * step / recipe.steps))
            out = teacher(roll_jitter(x, recipe.jitter, generator))
            loss = F.cross_entropy(out, y) + recipe.r_bn * stats.loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if bounds is not None:
                with torch.no_grad():
                    x.data = torch.maximum(torch.minimum(x.data, bounds[1]), bounds[0])
            if on_step is not None:
                on_step(step + 1, float(loss.detach()))
    finally:
        stats.remove()
    return x.detach()


def directed_perturbation(teacher: nn.Module, x: Tensor, y: Tensor, steps: int, rho: float) -> nn.Module:
    """DWA's directed weight adjustment: a copy of the teacher moved ``steps`` times by ``rho / steps``
    along the normalised gradient of its cross-entropy on (``x``, ``y``) (loss ascent), in eval
    mode (its BatchNorm running statistics are kept)."""
    model = copy.deepcopy(teacher).eval()
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    for _ in range(steps):
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) + 1e-12
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.add_(g, alpha=rho / steps / float(norm))
    for p in params:
        p.requires_grad_(False)
    return model
