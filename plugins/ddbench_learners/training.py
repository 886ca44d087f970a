"""The evaluation training loop shared by the classifier learners (``specs/methods.md`` §3)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddbench.augment import DSA, DCAugment
from ddbench.interfaces import Artifact, Recipe, TaskView


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with PyTorch's default initialisation drawn from ``seed`` alone (on CPU,
    so an init is identical on every device), leaving the global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def augmenter(recipe: Recipe, seed: int, device: torch.device) -> Callable[[Tensor], Tensor] | None:
    """The per-sample augmentation a recipe declares (DSA, DC's MNIST augmentation, or none)."""
    if recipe.augment == "dsa":
        return DSA(recipe.dsa_strategy, seed, device)
    if recipe.augment == "dc":
        return DCAugment(seed, device)
    return None


def learning_rate(artifact: Artifact, recipe: Recipe) -> float:
    """The recipe's lr, or the learned lr stored in the artifact (MTT) when the recipe names one."""
    if recipe.lr_from_artifact is None:
        return recipe.lr
    return float(artifact.tensors[recipe.lr_from_artifact].detach().reshape(-1)[0])


def train_classifier(model: nn.Module, artifact: Artifact, recipe: Recipe, generator: torch.Generator,
                     bf16: bool = False) -> nn.Module:
    """Train on the artifact's ``x`` and ``y`` (hard labels, or soft label rows) as ``evaluate_synset``:

    SGD (momentum, weight decay from the recipe), cross-entropy, shuffled batches, epoch indices
    0..E, lr x 0.1 once after epoch index E//2 + 1 (the optimiser is rebuilt then, as in the
    reference code, which resets momentum). Augmentation per sample, drawn from ``generator``.
    ``bf16``: forward and backward under bf16 autocast on CUDA (ignored on CPU).
    """
    x, y = artifact.x, artifact.y
    device = x.device
    lr = learning_rate(artifact, recipe)
    seed = int(torch.randint(2**62, (1,), generator=generator, device=device))
    augment = augmenter(recipe, seed, device)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    n, bs = len(x), max(1, min(recipe.batch_size, len(x)))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
    model.train()
    for epoch in range(recipe.epochs + 1):
        perm = torch.randperm(n, generator=generator, device=device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            xb = x[idx] if augment is None else augment(x[idx])
            with autocast:
                loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch == recipe.epochs // 2 + 1:
            lr *= 0.1
            opt = torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return model


def require_classification(task: TaskView, learner: str) -> int:
    if task.num_classes is None:
        raise ValueError(f"learner {learner!r} is a classifier; task {task.name!r} is regression: use the 'two-layer' learner.")
    return task.num_classes
