"""Recovering images from a teacher (docs/methods.md §14): match the teacher's BatchNorm
statistics plus cross-entropy on jittered views (SRe2L), optionally against a copy of the teacher
perturbed along its loss-ascent direction on the batch's own first view (DWA)."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddbench.contracts.checkpoint import Checkpointer

Perturb = Callable[[Tensor], nn.Module]
"""DWA's step: the teacher a batch is recovered against, given the batch's first jittered view."""


@dataclass(frozen=True)
class RecoverRecipe:
    """Recovery of one batch: ``steps`` Adam steps on the pixels at ``lr`` (betas ``beta1``,
    ``beta2``, cosine to zero), a random roll of 0 to ``jitter`` pixels along each axis every step,
    and loss cross-entropy + ``r_bn`` x the BatchNorm-statistics distance, whose variance terms weigh
    ``r_var`` and whose first layer weighs ``first_bn`` (:class:`BatchNormStatistics`)."""

    steps: int = 1000
    lr: float = 0.25
    beta1: float = 0.5
    beta2: float = 0.9
    jitter: int = 4
    r_bn: float = 0.01
    r_var: float = 1.0
    first_bn: float = 10.0


class BatchNormStatistics:
    """Forward hooks on every BatchNorm layer of a model: after a forward pass, :meth:`loss` is the
    sum over layers l of w_l (``r_var`` ||batch var - running var||_2 + ||batch mean - running mean||_2)
    of the layer's input (biased variance), with w = ``first_bn`` on the first layer and 1 on the others."""

    def __init__(self, model: nn.Module, r_var: float = 1.0, first_bn: float = 1.0):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError("the teacher has no BatchNorm layer, whose statistics recovery matches: "
                             "use a BatchNorm teacher (resnet, or convnet:norm=batchnorm)")
        self.r_var, self.first_bn = r_var, first_bn
        self.terms: list[Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.modules.batchnorm._BatchNorm, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        assert module.running_var is not None and module.running_mean is not None  # teachers track their statistics
        term = self.r_var * torch.linalg.vector_norm(var - module.running_var, 2) \
            + torch.linalg.vector_norm(mean - module.running_mean, 2)
        self.terms.append(term * (self.first_bn if not self.terms else 1.0))

    def loss(self) -> Tensor:
        total = torch.stack(self.terms).sum()
        self.terms = []
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def roll_jitter(x: Tensor, jitter: int, generator: torch.Generator) -> Tensor:
    """``x`` rolled by one random offset in 0..``jitter`` along the rows and one along the columns
    (the whole batch alike, as the official ``random.randint(0, jitter)`` pair)."""
    if jitter <= 0:
        return x
    rows, cols = torch.randint(0, jitter + 1, (2,), generator=generator, device=generator.device).tolist()
    return torch.roll(x, shifts=(rows, cols), dims=(-2, -1))


def recover(teacher: nn.Module, x0: Tensor, y: Tensor, recipe: RecoverRecipe, generator: torch.Generator,
            bounds: tuple[Tensor, Tensor] | None = None, on_step: Callable[[int, float], None] | None = None,
            perturb: Perturb | None = None, checkpoint: Checkpointer | None = None, saved: dict[str, Any] | None = None,
            values: dict[str, Any] | None = None, offset: int = 0) -> Tensor:
    """Images optimised from ``x0`` so that the (eval-mode) teacher classifies them as ``y`` and its
    BatchNorm layers see their running statistics; pixels clamped to ``bounds`` after every step.
    ``perturb`` (DWA) replaces the teacher, at the first step, by the model it returns for that
    step's jittered view of ``x0``.

    ``checkpoint``: offered a checkpoint after every step, at step ``offset`` + the steps done, with
    ``values`` and ``batch_step`` (the steps done); ``saved``: the values of the checkpoint the
    caller restored, when it was taken in this recovery (the pixels, Adam's state and DWA's
    perturbed teacher are loaded as they are named)."""
    teacher.eval()
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=recipe.lr, betas=(recipe.beta1, recipe.beta2))
    stats: BatchNormStatistics | None = None
    first = 0
    if checkpoint is not None:
        checkpoint.track(pixels=x, adam=opt)
        if saved is not None:
            first = saved["batch_step"]
            if perturb is not None:  # the perturbed teacher of the first step, as it was saved
                teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
                checkpoint.track(perturbed=teacher)
            stats = BatchNormStatistics(teacher, recipe.r_var, recipe.first_bn)
    try:
        for step in range(first, recipe.steps):
            for group in opt.param_groups:
                group["lr"] = 0.5 * recipe.lr * (1 + math.cos(math.pi * step / recipe.steps))
            view = roll_jitter(x, recipe.jitter, generator)
            if stats is None:
                if perturb is not None:
                    teacher = perturb(view.detach())
                    if checkpoint is not None:
                        checkpoint.track(perturbed=teacher)
                stats = BatchNormStatistics(teacher, recipe.r_var, recipe.first_bn)
            loss = F.cross_entropy(teacher(view), y) + recipe.r_bn * stats.loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if bounds is not None:
                with torch.no_grad():
                    x.data = torch.maximum(torch.minimum(x.data, bounds[1]), bounds[0])
            if on_step is not None:
                on_step(step + 1, float(loss.detach()))
            if checkpoint is not None:
                checkpoint.step(offset + step + 1, **(values or {}), batch_step=step + 1)
    finally:
        if stats is not None:
            stats.remove()
    return x.detach()


def directed_perturbation(teacher: nn.Module, x: Tensor, y: Tensor, steps: int, rho: float) -> nn.Module:
    """DWA's directed weight adjustment: a copy of the teacher moved ``steps`` times by ``rho / steps``
    along the gradient of its cross-entropy on (``x``, ``y``), normalised over all parameters
    together (loss ascent), in eval mode (its BatchNorm running statistics are kept)."""
    model = copy.deepcopy(teacher).eval()
    params = list(model.parameters())
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
