"""The evaluation training loop shared by the classifier learners (``docs/methods.md`` §3)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddbench.budget import labels, stages
from ddbench.ops.augment import DSA, DCAugment, Mixup, PadCrop, apply, crop_views
from ddbench.budget import generator
from ddbench.contracts.interfaces import Artifact, Recipe, TaskView


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


def block_augmenter(augment: DSA | DCAugment | PadCrop | None, steps: int, batch: int, size: int) -> Callable[[int, Tensor], Tensor]:
    """``f(step, x)`` augmenting the block's ``step``-th batch: DSA from a plan drawn for the whole
    block (:meth:`~ddbench.ops.augment.DSA.plan`), DC-augment or a padded crop drawing as they go, or the identity."""
    if augment is None:
        return lambda step, x: x
    if isinstance(augment, DSA):
        plan = augment.plan(steps, batch, size)
        return lambda step, x: apply(x, plan[step, : len(x)])
    return lambda step, x: augment(x)


def learning_rate(artifact: Artifact, recipe: Recipe) -> float:
    """The recipe's lr, or the learned lr stored in the artifact (MTT) when the recipe names one."""
    if recipe.lr_from_artifact is None:
        return recipe.lr
    return float(artifact.tensors[recipe.lr_from_artifact].detach().reshape(-1)[0])


def stage_parts(artifact: Artifact, recipe: Recipe) -> list[tuple[Artifact, float]]:
    """What training runs, in order: (rows, lr) per stage of a staged artifact (:mod:`ddbench.budget.stages`:
    stage k on the first ``stage.end[k]`` rows at ``stage.lr[k]``), else the whole artifact at
    :func:`learning_rate`. Every learner that trains stages loops over this, and nothing else. An
    artifact that stores a generator (:mod:`ddbench.budget.generator`) is decoded first."""
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


def require_classification(task: TaskView, learner: str) -> int:
    if task.num_classes is None:
        raise ValueError(f"learner {learner!r} is a classifier; task {task.name!r} is regression: use a regression learner (see `ddbench ls learners`).")
    return task.num_classes
