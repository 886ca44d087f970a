"""The sequential evaluation engine: one net trained on an artifact with the recipe (``docs/methods.md`` §3).

Its seeds, draws, schedule and optimiser come from :mod:`ddbench.ops.steps`, which the vmapped
engine (:mod:`ddbench.ops.ensemble`) shares; the two engines import nothing from each other.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddbench.budget import labels
from ddbench.contracts.interfaces import Artifact
from ddbench.contracts.recipe import Recipe
from ddbench.ops.augment import DSA, DCAugment, PadCrop, apply, crop_views
from ddbench.ops.steps import augmenter, cosine_lr, draw_seed, epoch_blocks, mixer, optimizer, shuffles, stage_parts


def block_augmenter(augment: DSA | DCAugment | PadCrop | None, steps: int, batch: int, size: int) -> Callable[[int, Tensor], Tensor]:
    """``f(step, x)`` augmenting the block's ``step``-th batch: DSA from a plan drawn for the whole
    block (:meth:`~ddbench.ops.augment.DSA.plan`), DC-augment or a padded crop drawing as they go, or the identity."""
    if augment is None:
        return lambda step, x: x
    if isinstance(augment, DSA):
        plan = augment.plan(steps, batch, size)
        return lambda step, x: apply(x, plan[step, : len(x)])
    return lambda step, x: augment(x)


def batch_loss(model: nn.Module, artifact: Artifact, recipe: Recipe, kind: str, idx: Tensor, xb: Tensor, epoch: int,
               teacher: nn.Module | None = None) -> Tensor:
    """The loss of one batch in label regime ``kind`` (docs/labels.md): cross-entropy on hard or soft
    labels; KL to ``teacher`` (the artifact's, :func:`~ddbench.budget.labels.distilling_teacher`) on the same
    augmented (and mixed) view; KL to the bank's logits of this epoch's view."""
    if kind == "teacher":
        if teacher is None:
            raise ValueError("the teacher regime needs the teacher the harness rebuilds from the artifact "
                             "(ddbench.budget.labels.with_teacher)")
        with torch.no_grad():
            target = teacher(xb)
        return labels.kd_loss(model(xb), target, recipe.temperature, recipe.kd_t2)
    if kind == "soft-bank":
        bank = artifact.tensors[labels.BANK_LOGITS]
        return labels.kd_loss(model(xb), bank[idx, epoch % bank.shape[1]], recipe.temperature, recipe.kd_t2)
    return F.cross_entropy(model(xb), artifact.y[idx])


def train_classifier(model: nn.Module, artifact: Artifact, recipe: Recipe, generator: torch.Generator,
                     bf16: bool = False) -> nn.Module:
    """Train on the artifact, stage after stage when it is staged (:func:`stage_parts`; each stage
    a fresh optimiser and schedule at its own lr, continuing from the previous stage's weights,
    drawing from the same ``generator``), each as :func:`train_once`."""
    for part, lr in stage_parts(artifact, recipe):
        train_once(model, part, recipe, generator, lr, bf16)
    return model


def train_once(model: nn.Module, artifact: Artifact, recipe: Recipe, generator: torch.Generator, lr: float,
               bf16: bool = False) -> nn.Module:
    """Train on the artifact at ``lr`` in its label regime (hard or soft ``y``, a teacher, a soft-label bank), as ``evaluate_synset``:

    the recipe's optimiser (SGD: momentum and weight decay; AdamW: weight decay), shuffled batches,
    epoch indices 0..E. Schedule ``step``: lr x 0.1 once after epoch index E//2 + 1 (the optimiser
    is rebuilt then, as in the reference code, which resets momentum); ``cosine``: the rate of each
    epoch set by :func:`cosine_lr`. Augmentation per sample, seeded from ``generator`` (a bank's
    views are its augmentation: its batches are cropped and flipped as stored, nothing else), then
    in the teacher regime the recipe's mixup (:func:`mixer`); shuffles and DSA draws are made a
    block of epochs at a time (:func:`epoch_blocks`). The loss is :func:`batch_loss`. ``bf16``:
    forward and backward under bf16 autocast on CUDA (ignored on CPU).
    """
    x = artifact.x
    kind = labels.regime(artifact.tensors, artifact.recipe)
    device = x.device
    seed = draw_seed(generator)
    augment = None if kind == "soft-bank" else augmenter(recipe, seed, device)
    mix = mixer(recipe, kind, generator, device)
    teacher = None if artifact.teacher is None else labels.distilling_teacher(artifact.teacher, recipe.teacher_mode)
    params = list(model.parameters())
    opt = optimizer(params, recipe, lr)
    n, bs = len(x), max(1, min(recipe.batch_size, len(x)))
    steps = math.ceil(n / bs)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
    model.train()
    for block in epoch_blocks(recipe.epochs, n):
        perms = shuffles(generator, n, len(block), device)
        augment_step = block_augmenter(augment, len(block) * steps, bs, x.shape[-1])
        for e, epoch in enumerate(block):
            if recipe.schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(lr, epoch, recipe.epochs)
            for j in range(steps):
                idx = perms[e, j * bs : (j + 1) * bs]
                if kind == "soft-bank":
                    views = artifact.tensors[labels.BANK_VIEWS]
                    xb = crop_views(x[idx], views[idx, epoch % views.shape[1]], recipe.crop_fill)
                else:
                    xb = augment_step(e * steps + j, x[idx])
                    xb = xb if mix is None else mix(xb)
                with autocast:
                    loss = batch_loss(model, artifact, recipe, kind, idx, xb, epoch, teacher)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if recipe.schedule == "step" and epoch == recipe.epochs // 2 + 1:
                lr *= 0.1
                opt = optimizer(params, recipe, lr)
    return model

