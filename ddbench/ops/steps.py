"""What the two evaluation engines share, in one place: the sequential loop
(:mod:`ddbench.ops.training`) and the vmapped ensemble (:mod:`ddbench.ops.ensemble`) both import
from here and never from each other, so model k of an ensemble draws and steps as it would alone.

- seeds: :func:`seeded` (a model's initialisation), :func:`draw_seed` (a stream spawned from another);
- draws: :func:`augmenter` and :func:`mixer` (the recipe's streams), :func:`shuffles` and
  :func:`epoch_blocks` (made a block of epochs at a time), :data:`DRAWS` (their cache tag);
- what trains: :func:`stage_parts` (rows and lr, stage by stage) and :func:`learning_rate`;
- the optimiser: :func:`optimizer` (``torch.optim`` for one module), :func:`sgd_step` and
  :func:`adamw_step` (the same arithmetic on stacked tensors), :func:`cosine_lr` (the schedule).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ddbench.budget import generator, stages
from ddbench.contracts.interfaces import Artifact
from ddbench.contracts.recipe import Recipe
from ddbench.ops.augment import DSA, DCAugment, Mixup, PadCrop


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with PyTorch's default initialisation drawn from ``seed`` alone (on CPU,
    so an init is identical on every device), leaving the global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def draw_seed(generator: torch.Generator) -> int:
    """A 62-bit seed drawn from ``generator`` (on its own device): how a stream seeds the streams it spawns."""
    return int(torch.randint(2**62, (1,), generator=generator, device=generator.device))


BLOCK_DRAWS = 1 << 14  # shuffles and DSA transforms for about this many samples are drawn at once
DRAWS = "blocked-v2"  # how training draws its shuffles and augmentation: part of cache keys of trained weights


def augmenter(recipe: Recipe, seed: int, device: torch.device) -> DSA | DCAugment | PadCrop | None:
    """The per-sample augmentation a recipe declares (DSA, DC's MNIST augmentation, a padded crop
    with or without a flip, or none)."""
    if recipe.augment == "dsa":
        return DSA(recipe.dsa_strategy, seed, device)
    if recipe.augment == "dc":
        return DCAugment(seed, device)
    if recipe.augment in ("crop", "crop_flip"):
        return PadCrop(recipe.crop_fill, recipe.augment == "crop_flip", seed, device)
    return None


def mixer(recipe: Recipe, kind: str, generator: torch.Generator, device: torch.device) -> Mixup | None:
    """The recipe's mixup, drawn after the augmentation's seed from the same ``generator``, in the
    teacher regime only (the teacher labels each mixed batch; fixed labels would need mixing too)."""
    if recipe.mixup <= 0 or kind != "teacher":
        return None
    return Mixup(recipe.mixup, draw_seed(generator), device)


def epoch_blocks(epochs: int, n: int) -> list[range]:
    """Epoch indices 0..``epochs`` in blocks whose shuffles and augmentation draws are made at once
    (about :data:`BLOCK_DRAWS` samples a block): a few draws per run instead of a few per step."""
    size = max(1, BLOCK_DRAWS // n)
    return [range(start, min(start + size, epochs + 1)) for start in range(0, epochs + 1, size)]


def shuffles(generator: torch.Generator, n: int, count: int, device: torch.device) -> Tensor:
    """``count`` independent uniform permutations of ``range(n)``, (count, n), in one draw (argsort
    of float64 uniforms, where ties have probability about n^2 / 2^54)."""
    return torch.rand(count, n, generator=generator, device=device, dtype=torch.float64).argsort(dim=1)


def learning_rate(artifact: Artifact, recipe: Recipe) -> float:
    """The recipe's lr, or the learned lr stored in the artifact (MTT) when the recipe names one."""
    if recipe.lr_from_artifact is None:
        return recipe.lr
    return float(artifact.tensors[recipe.lr_from_artifact].detach().reshape(-1)[0])


def stage_parts(artifact: Artifact, recipe: Recipe) -> list[tuple[Artifact, float]]:
    """What training runs, in order: (rows, lr) per stage of a staged artifact (:mod:`ddbench.budget.stages`:
    stage k on the first ``stage.end[k]`` rows at ``stage.lr[k]``), else the whole artifact at
    :func:`learning_rate`. Both engines loop over this, and nothing else. An artifact that stores a
    generator (:mod:`ddbench.budget.generator`) is decoded first."""
    artifact = generator.decoded(artifact)
    if stages.is_staged(artifact.tensors):
        return stages.stage_parts(artifact)
    return [(artifact, learning_rate(artifact, recipe))]


def optimizer(params: list[nn.Parameter], recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimiser at ``lr``: SGD with its momentum and weight decay, or AdamW with its weight decay."""
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """The cosine schedule's rate for epoch index ``epoch`` of 0..``epochs`` (``epochs`` + 1 epochs), from ``lr`` towards 0."""
    return 0.5 * lr * (1 + math.cos(math.pi * epoch / (epochs + 1)))


def sgd_step(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor] | None, lr: float,
             momentum: float, weight_decay: float) -> list[Tensor] | None:
    """One ``torch.optim.SGD`` step (dampening 0, no Nesterov) on stacked tensors, in place.

    Returns the momentum buffers (``None`` before the first step, as the optimiser's fresh state).
    """
    if weight_decay != 0:
        grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
    if momentum != 0:
        if buffers is None:
            buffers = [g.clone() for g in grads]
        else:
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, grads)
        grads = buffers
    torch._foreach_add_(params, grads, alpha=-lr)
    return buffers


def adamw_step(params: list[Tensor], grads: list[Tensor], state: tuple[list[Tensor], list[Tensor], int] | None, lr: float,
               weight_decay: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
               ) -> tuple[list[Tensor], list[Tensor], int]:
    """One ``torch.optim.AdamW`` step (no amsgrad) on stacked tensors, in place; returns the state
    (first and second moments, step count), ``None`` before the first step."""
    beta1, beta2 = betas
    m, v, t = state if state is not None else ([torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params], 0)
    t += 1
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(m, grads, 1 - beta1)
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, math.sqrt(1 - beta2 ** t))
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, m, denom, value=-lr / (1 - beta1 ** t))
    return m, v, t
