"""The analyses' probe trainer (``docs/analyses.md`` §2): full-batch SGD on a weighted set, for one
model or a vmapped ensemble of K, and the predictions and agreements the analyses compare.

A *weighted* set gives each model k a weight per example; model k minimises
``sum_i w_ki * loss_i / sum_i w_ki``. A zero weight is exactly leaving the example out, so the
N + 1 leave-one-out trainings of an N-point set are one ensemble (``pointwise_influence``), and
padded class-balanced subsets of different sizes train together (``early_agreement``).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ddbench.contracts.interfaces import Artifact, Learner, TaskView
from ddbench.contracts.recipe import Recipe
from ddbench.ops.ensemble import grouped_forward, grouped_layers, stack_parameters, vmap_unsupported, write_back
from ddbench.ops.steps import sgd_step

PAPER_STEPS = 300  # the paper's probe trainer: full batch, 300 SGD steps, lr 0.01, momentum 0.9, no weight decay
PAPER_LR = 0.01
PAPER_MOMENTUM = 0.9


def example_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy for hard labels (int) or soft label rows (float, one row per example)."""
    if y.is_floating_point():
        return -(y * F.log_softmax(logits, dim=-1)).sum(-1)
    return F.cross_entropy(logits, y, reduction="none")


def fit_full_batch(model: nn.Module, x: Tensor, y: Tensor, steps: int = PAPER_STEPS, lr: float = PAPER_LR,
                   momentum: float = PAPER_MOMENTUM, weights: Tensor | None = None) -> nn.Module:
    """Train one model with ``steps`` full-batch SGD steps (``torch.optim.SGD``, no weight decay) on
    the weighted mean loss; the sequential reference of :func:`fit_weighted`."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    w = torch.ones(len(x), device=x.device) if weights is None else weights
    model.train()
    for _ in range(steps):
        loss = (w * example_losses(model(x), y)).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def fit_weighted(models: Sequence[nn.Module], x: Tensor, y: Tensor, weights: Tensor, steps: int = PAPER_STEPS,
                 lr: float = PAPER_LR, momentum: float = PAPER_MOMENTUM) -> str:
    """Train K models, model k on ``(x[k], y[k])`` weighted by ``weights[k]`` (x: (K, B, ...), y: (K, B)
    or (K, B, C), weights: (K, B)), with full-batch SGD as :func:`fit_full_batch` would one by one.

    One vmapped ensemble where the models allow it (grouped ops for a plain chain of layers, else
    ``torch.func.vmap``), else a loop of :func:`fit_full_batch` on each model's examples of nonzero
    weight. Returns which of the two ran."""
    reason = vmap_unsupported(models)
    if reason is not None:
        for k, model in enumerate(models):  # zero weights dropped: in a BatchNorm model they would still shape the batch statistics
            keep = weights[k] > 0
            fit_full_batch(model, x[k][keep], y[k][keep], steps, lr, momentum, weights[k][keep])
        return f"sequential: {reason}"
    base = copy.deepcopy(models[0]).to("meta").train()
    for model in models:
        model.train()
    params = stack_parameters(models)
    names, tensors = list(params), list(params.values())
    norm = weights / weights.sum(1, keepdim=True)
    layers = grouped_layers(base)

    if layers is not None:
        def gradients(ts: list[Tensor]) -> list[Tensor]:
            leaves = [t.detach().requires_grad_() for t in ts]
            logits = grouped_forward(layers, dict(zip(names, leaves)), x)
            k, b = logits.shape[:2]
            losses = example_losses(logits.flatten(0, 1), y.flatten(0, 1)).view(k, b)
            return list(torch.autograd.grad((losses * norm).sum(), leaves))
    else:
        def loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor, wb: Tensor) -> Tensor:
            return (wb * example_losses(functional_call(base, p, (xb,)), yb)).sum()
        per_model = vmap(grad(loss))

        def gradients(ts: list[Tensor]) -> list[Tensor]:
            g = per_model(dict(zip(names, ts)), x, y, norm)
            return [g[n] for n in names]
    buffers: list[Tensor] | None = None
    for _ in range(steps):
        buffers = sgd_step(tensors, gradients(tensors), buffers, lr, momentum, 0.0)
    write_back(params, models)
    return "ensemble"


def copies(model: nn.Module, k: int) -> list[nn.Module]:
    """``k`` independent copies of one initialised model (a fixed initialisation shared by k runs)."""
    return [copy.deepcopy(model) for _ in range(k)]


def accuracy(pred: Tensor, y: Tensor) -> float:
    """Fraction of predicted classes (already argmaxed) equal to ``y``."""
    return float((pred == y).float().mean())


def agreement(a: Tensor, b: Tensor) -> Tensor:
    """Fraction of examples on which two prediction vectors agree; broadcasts over leading axes."""
    return (a == b).float().mean(-1)


def train_steps(model: nn.Module, x: Tensor, y: Tensor, steps: int, batch_size: int, generator: torch.Generator,
                lr: float = PAPER_LR, momentum: float = PAPER_MOMENTUM,
                on_step: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Real-data training (shuffled mini-batches, SGD, no weight decay) for ``steps`` iterations;
    ``on_step(step, model)`` sees the model before the first step (step 0) and after each step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    n, bs = len(x), min(batch_size, len(x))
    per_epoch = -(-n // bs)
    perm = torch.empty(0, dtype=torch.long)
    if on_step is not None:
        on_step(0, model)
    for step in range(steps):
        j = step % per_epoch
        if j == 0:
            perm = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
        idx = perm[j * bs : (j + 1) * bs]
        model.train()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step + 1, model)
    return model


def fit_protocol(learner: Learner, view: TaskView, data: Artifact, seeds: Sequence[int], protocol: str,
                 recipe: Recipe) -> list[nn.Module]:
    """Fresh models of ``learner`` from ``seeds`` trained on ``data`` under an analysis protocol:
    ``paper`` (the probe trainer: :func:`fit_weighted`, full batch, :data:`PAPER_STEPS` steps) or
    ``native`` (``learner.fit_ensemble`` with ``recipe``, each model's stream seeded by its seed)."""
    device = data.x.device
    models = [learner.build(view, seed).to(device) for seed in seeds]
    if protocol == "paper":
        k = len(models)
        x, y = data.x.expand(k, *data.x.shape), data.y.expand(k, *data.y.shape)
        fit_weighted(models, x, y, torch.ones(k, len(data.x), device=device))
    else:
        learner.fit_ensemble(models, data, recipe, [torch.Generator(device).manual_seed(s) for s in seeds])
    return models


def combine(a: Artifact, x: Tensor, y: Tensor, num_classes: int) -> Artifact:
    """``a`` with the examples (``x``, ``y``) appended (hard labels become one-hot rows when ``a``'s
    labels are soft); ``a``'s other tensors (a learned lr) are kept."""
    ya = a.y
    if ya.is_floating_point():
        y = F.one_hot(y, num_classes).to(ya.dtype)
    return Artifact({**a.tensors, "x": torch.cat([a.x, x]), "y": torch.cat([ya, y])}, a.recipe)


def class_draw(labels: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """Indices of ``per_class`` examples of every class, in the order of one seeded permutation per
    class: the first k of them are a prefix of the first k' > k (nested draws)."""
    out = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        perm = torch.randperm(len(idx), generator=generator, device=generator.device).to(idx.device)
        out.append(idx[perm[:per_class]])
    return torch.stack(out, 1).flatten() if out else torch.empty(0, dtype=torch.long)
