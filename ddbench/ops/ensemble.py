"""Train K models of one architecture together as a vmapped ensemble (``docs/methods.md`` §13.3).

The K models' parameters are stacked along a new leading axis and trained together: one forward
and one backward per step for all K instead of K small, launch-bound ones. Models whose forward is
a plain chain of layers (:class:`LayerChain`: ConvNet-3, the MLP) run as grouped
convolutions and batched matmuls (:func:`grouped_forward`, the fewest kernels); any other
vmappable model runs through ``torch.func.vmap(grad_and_value(...))`` over ``functional_call``. Each model keeps everything
the sequential engine (:func:`~ddbench.ops.training.train_classifier`) gives it: its own
initialisation, its own generator for the shuffle, and its own augmentation stream drawn in the
same order, so model k ends where sequential training with the same seed ends, to floating-point
tolerance (the vmapped convolutions sum in a different order). The two engines share their seeds,
draws, schedule and optimiser arithmetic through :mod:`ddbench.ops.steps` and import nothing from
each other; :func:`~ddbench.ops.classifier.fit_classifiers` chooses between them.

Per-sample DSA (§4): each model draws a family and magnitudes for its own batch from its own
stream, a block of epochs at a time (a plan per model, :meth:`~ddbench.ops.augment.DSA.plan`, as
``train_classifier`` draws them); a step augments all K batches in one vectorised call whatever
families they drew. Shuffles are drawn a block at a time too, so a step launches no per-model
kernels at all. SGD with momentum and weight decay, or AdamW, is applied to the stacked tensors
with the same ``torch._foreach`` arithmetic as ``torch.optim.SGD`` / ``torch.optim.AdamW``
(:func:`~ddbench.ops.steps.sgd_step`, :func:`~ddbench.ops.steps.adamw_step`), under
the recipe's step or cosine schedule. In the teacher label regime each model's augmented batch goes
through the shared teacher and the loss is the KL to its softened prediction, as sequentially; a
train-mode teacher takes the K batches in one forward whose BatchNorm normalises each batch by its
own statistics (:func:`batches_teacher`), the outputs of K separate forwards.

The engine also trains MTT's expert trajectories (§7): ``on_epoch`` sees the stacked parameters
after every epoch and :func:`flat_parameters` turns them into one flat vector per model.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from ddbench.budget import labels
from ddbench.contracts.recipe import Recipe
from ddbench.ops.augment import DSA, DCAugment, PadCrop, Transform, apply
from ddbench.ops.steps import adamw_step, augmenter, cosine_lr, draw_seed, epoch_blocks, mixer, sgd_step, shuffles

Params = dict[str, Tensor]
EpochCallback = Callable[[int, Params], None]


def vmap_unsupported(models: Sequence[nn.Module]) -> str | None:
    """``None`` if ``models`` can be trained as one vmapped ensemble, else the reason they cannot."""
    if not models:
        return "no models to train"
    shapes = [[(n, p.shape) for n, p in m.named_parameters()] for m in models]
    if any(type(m) is not type(models[0]) or s != shapes[0] for m, s in zip(models, shapes)):
        return "the models differ in architecture"
    for module in models[0].modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return f"{type(module).__name__} mixes the samples of a batch and keeps running statistics"
        if isinstance(module, nn.modules.dropout._DropoutNd):
            return f"{type(module).__name__} draws from the global RNG"
    if any(True for _ in models[0].buffers()):
        return "the model has buffers, which a vmapped ensemble cannot update in place"
    return None


GROUPED_LAYERS = (nn.Conv2d, nn.GroupNorm, nn.ReLU, nn.AvgPool2d, nn.Flatten, nn.Linear, nn.Identity)


class LayerChain(nn.Module):
    """A model whose forward is the plain chain of :meth:`layers`, in order.

    The ensemble trains such a model on its grouped path (grouped convolutions and batched
    matmuls, the fewest kernels) when every layer is one it knows (:data:`GROUPED_LAYERS`).
    """

    def layers(self) -> list[nn.Module]:
        """The layers in forward order."""
        raise NotImplementedError(f"{type(self).__name__} must list its layers")

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers():
            x = layer(x)
        return x


def grouped_layers(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """(name, module) in forward order when ``model`` is a :class:`LayerChain` of layers the grouped
    path runs (conv, group norm, ReLU, avg pool, flatten, linear), else ``None``."""
    if not isinstance(model, LayerChain):
        return None
    chain = model.layers
    names = {id(m): n for n, m in model.named_modules()}
    layers = [(names[id(m)], m) for m in chain()]
    supported = all(type(m) in GROUPED_LAYERS for _, m in layers)
    supported &= all(m.padding_mode == "zeros" for _, m in layers if isinstance(m, nn.Conv2d))
    supported &= all((m.start_dim, m.end_dim) == (1, -1) for _, m in layers if isinstance(m, nn.Flatten))
    return layers if supported else None


def grouped_forward(layers: list[tuple[str, nn.Module]], params: Params, x: Tensor) -> Tensor:
    """K models' forward as one chain of grouped ops: (K, B, ...) inputs -> (K, B, outputs).

    Image activations are held as (B, K*C, H, W), so a convolution is one ``groups=K`` convolution,
    a GroupNorm(G, C) is one GroupNorm with K*G groups (the same per-sample statistics), and pooling
    and ReLU act per channel; a linear layer is one batched matmul over (K, B, F).
    """
    k, b = x.shape[:2]
    h, folded = x, False
    for name, layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.GroupNorm, nn.AvgPool2d)) and not folded:
            h, folded = h.transpose(0, 1).reshape(b, -1, *h.shape[3:]), True
        if isinstance(layer, nn.Conv2d):
            bias = params[f"{name}.bias"].flatten() if layer.bias is not None else None
            h = F.conv2d(h, params[f"{name}.weight"].flatten(0, 1), bias, layer.stride, layer.padding,
                         layer.dilation, layer.groups * k)
        elif isinstance(layer, nn.GroupNorm):
            weight, bias = (params[f"{name}.{p}"].flatten() if layer.affine else None for p in ("weight", "bias"))
            h = F.group_norm(h, layer.num_groups * k, weight, bias, layer.eps)
        elif isinstance(layer, nn.AvgPool2d):
            h = F.avg_pool2d(h, layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode,
                             layer.count_include_pad, layer.divisor_override)
        elif isinstance(layer, nn.ReLU):
            h = F.relu(h)
        elif isinstance(layer, nn.Flatten):
            h, folded = (h.reshape(b, k, -1).transpose(0, 1) if folded else h.flatten(2)), False
        elif isinstance(layer, nn.Linear):
            weight = params[f"{name}.weight"].transpose(1, 2)
            h = torch.bmm(h, weight) if layer.bias is None else torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, weight)
    return h.reshape(b, k, -1).transpose(0, 1) if folded else h


def stack_parameters(models: Sequence[nn.Module]) -> Params:
    """The models' parameters stacked on a new leading axis (K, ...), detached copies."""
    names = [n for n, _ in models[0].named_parameters()]
    per_model = [dict(m.named_parameters()) for m in models]
    return {n: torch.stack([p[n].detach() for p in per_model]) for n in names}


def flat_parameters(params: Params) -> Tensor:
    """(K, P): each model's parameters flattened and concatenated in ``named_parameters`` order."""
    return torch.cat([p.detach().reshape(p.shape[0], -1) for p in params.values()], dim=1)


def write_back(params: Params, models: Sequence[nn.Module]) -> None:
    """Copy the stacked parameters into the K modules."""
    with torch.no_grad():
        for k, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][k])


class _Augmenter:
    """The K per-model augmentation streams of a recipe (and mixups, in the teacher regime), seeded
    as ``train_classifier`` seeds them."""

    def __init__(self, recipe: Recipe, generators: Sequence[torch.Generator], device: torch.device, kind: str):
        seeds = [draw_seed(g) for g in generators]
        streams = [augmenter(recipe, seed, device) for seed in seeds]
        self.dsa = [s for s in streams if isinstance(s, DSA)]  # planned a block at a time
        self.drawn = [s for s in streams if isinstance(s, (DCAugment, PadCrop))]  # drawing as they go
        self.mixers = [m for m in (mixer(recipe, kind, g, device) for g in generators) if m is not None]
        self.plan: Transform | None = None

    def block(self, steps: int, batch: int, size: int) -> None:
        """Draw each model's DSA plan for the next ``steps`` batches, as ``train_classifier`` does,
        stacked (steps, K, batch): a step's transforms for all K models are one slice."""
        if self.dsa:
            self.plan = Transform.stack([stream.plan(steps, batch, size) for stream in self.dsa], dim=1)

    def __call__(self, step: int, xb: Tensor) -> Tensor:
        """Augment (then mix) each model's batch ``xb[k]`` with its own streams; ``xb`` is (K, B, ...)."""
        if self.plan is not None:
            xb = apply(xb.flatten(0, 1), self.plan[step, :, : xb.shape[1]].flatten()).view(xb.shape)
        elif self.drawn:
            xb = torch.stack([stream(x) for stream, x in zip(self.drawn, xb)])
        if not self.mixers:
            return xb
        return torch.stack([mix(x) for mix, x in zip(self.mixers, xb)])


class _BatchesNorm(nn.Module):
    """A train-mode BatchNorm for inputs that stack K batches, (K*B, C, ...): each of the K batches
    is normalised by its own statistics, as K separate forwards would (no running statistics)."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm, k: int):
        super().__init__()
        self.k, self.eps = k, norm.eps
        self.weight = None if norm.weight is None else norm.weight.detach().repeat(k)
        self.bias = None if norm.bias is None else norm.bias.detach().repeat(k)

    def forward(self, x: Tensor) -> Tensor:
        kb, c, rest = x.shape[0], x.shape[1], x.shape[2:]
        b = kb // self.k
        h = x.reshape(self.k, b, c, *rest).transpose(0, 1).reshape(b, self.k * c, *rest)
        h = F.batch_norm(h, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return h.reshape(b, self.k, c, *rest).transpose(0, 1).reshape(kb, c, *rest)


def batches_teacher(teacher: nn.Module, k: int) -> Callable[[Tensor], Tensor] | None:
    """``teacher`` (in train mode) as one forward over K stacked batches, (K, B, ...) -> (K, B, outputs),
    each batch normalised by its own BatchNorm statistics; None where a layer could mix the batches
    otherwise (dropout, or a module this function does not know to act per sample)."""
    per_sample = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity,
                  nn.Flatten, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.GroupNorm, nn.LayerNorm,
                  nn.modules.batchnorm._BatchNorm)
    if any(not isinstance(m, per_sample) for m in teacher.modules() if not list(m.children())):
        return None
    grouped = copy.deepcopy(teacher)
    for name, module in list(grouped.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            grouped.set_submodule(name, _BatchesNorm(module, k))

    def forward(xb: Tensor) -> Tensor:
        return grouped(xb.flatten(0, 1)).view(*xb.shape[:2], -1)
    return forward


def teacher_forward(teacher: nn.Module, mode: str, k: int) -> Callable[[Tensor], Tensor]:
    """The teacher's prediction on K stacked batches, (K, B, ...) -> (K, B, outputs), under a
    recipe's ``teacher_mode``: ``eval``, one forward; ``train``, each batch normalised by its own
    BatchNorm statistics (:func:`batches_teacher`, else one forward per batch)."""
    if mode != "train":
        return lambda xb: teacher(xb.flatten(0, 1)).view(*xb.shape[:2], -1)
    return batches_teacher(teacher, k) or (lambda xb: torch.stack([teacher(b) for b in xb]))


def _step(base: nn.Module, names: list[str], temperature: float = 1.0, t2: bool = False
          ) -> Callable[[list[Tensor], Tensor, Tensor], list[Tensor]]:
    """Per-model gradients of the mean cross-entropy for stacked parameters and (K, B, ...) batches:
    grouped ops for a plain chain of layers (fewest kernels), else ``vmap`` over ``functional_call``.
    With ``temperature`` T the logits are divided by T and (with ``t2``) the loss multiplied by T^2:
    against a teacher's softened prediction that is the gradient of :func:`ddbench.budget.labels.kd_loss`."""
    t = temperature
    scale = t * t if t2 else 1.0
    layers = grouped_layers(base)
    if layers is not None:
        def grouped(tensors: list[Tensor], xb: Tensor, yb: Tensor) -> list[Tensor]:
            leaves = [p.detach().requires_grad_() for p in tensors]
            logits = grouped_forward(layers, dict(zip(names, leaves)), xb)
            k, b = logits.shape[:2]
            losses = F.cross_entropy(logits.flatten(0, 1) / t, yb.flatten(0, 1), reduction="none").view(k, b) * scale
            return list(torch.autograd.grad(losses.mean(1).sum(), leaves))
        return grouped

    def loss(p: Params, xb: Tensor, yb: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(base, p, (xb,)) / t, yb) * scale

    per_model = vmap(grad_and_value(loss))

    def vmapped(tensors: list[Tensor], xb: Tensor, yb: Tensor) -> list[Tensor]:
        grads, _ = per_model(dict(zip(names, tensors)), xb, yb)
        return [grads[name] for name in names]
    return vmapped


def train_ensemble(models: Sequence[nn.Module], x: Tensor, y: Tensor | None, recipe: Recipe,
                   generators: Sequence[torch.Generator], *, lr: float | None = None, lr_decay: bool = True,
                   bf16: bool = False, on_epoch: EpochCallback | None = None, teacher: nn.Module | None = None
                   ) -> Sequence[nn.Module]:
    """Train ``models`` (K, one architecture, on ``x``'s device) together on (``x``, ``y``).

    The protocol is ``train_classifier``'s (§3): the recipe's optimiser (SGD with momentum and
    weight decay, or AdamW), cross-entropy (hard labels or soft label rows) or, with ``teacher``
    (``y`` unused), the KL to the teacher's prediction on the same augmented batch at the recipe's
    temperature; batches of ``recipe.batch_size`` from a fresh permutation per epoch, epoch indices
    0..``recipe.epochs``; schedule ``cosine`` (each epoch's rate by
    :func:`~ddbench.ops.steps.cosine_lr`) or ``step`` (with ``lr_decay``: lr x 0.1 once after
    epoch index E//2 + 1, the optimiser's state reset). Model k draws its shuffle and augmentation
    from ``generators[k]`` exactly as sequential training would.

    ``lr`` overrides ``recipe.lr`` (a learned lr). ``lr_decay=False`` keeps lr constant (MTT's
    experts, §7). ``bf16`` runs forward and backward under bf16 autocast on CUDA; on CPU it is
    ignored. ``on_epoch(epoch, params)`` is called after every epoch with the stacked (K, ...)
    parameters (live tensors: copy what you keep, e.g. :func:`flat_parameters`; the starting point
    is ``flat_parameters(stack_parameters(models))``). The trained parameters are written back into
    ``models``, which are returned.
    """
    reason = vmap_unsupported(models)
    if reason is not None:
        raise ValueError(f"cannot train these models as a vmapped ensemble: {reason}; train them one by one.")
    if len(generators) != len(models):
        raise ValueError(f"train_ensemble got {len(models)} models but {len(generators)} generators: give one each.")
    device = x.device
    lr = recipe.lr if lr is None else lr
    augment = _Augmenter(recipe, generators, device, "teacher" if teacher is not None else "hard")
    predict = None
    if teacher is not None:
        predict = teacher_forward(labels.distilling_teacher(teacher, recipe.teacher_mode), recipe.teacher_mode, len(models))
    base = copy.deepcopy(models[0]).to("meta").train()
    for model in models:
        model.train()
    params = stack_parameters(models)
    names, tensors = list(params), list(params.values())

    step = _step(base, names, recipe.temperature if teacher is not None else 1.0, recipe.kd_t2)
    adamw = recipe.optimizer == "adamw"
    base_lr = lr
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
    n, bs = len(x), max(1, min(recipe.batch_size, len(x)))
    steps = math.ceil(n / bs)
    state: Any = None  # the optimiser's: SGD's momentum buffers or AdamW's moments (None: fresh)
    for block in epoch_blocks(recipe.epochs, n):
        perms = torch.stack([shuffles(g, n, len(block), device) for g in generators])  # (K, epochs, n)
        augment.block(len(block) * steps, bs, x.shape[-1])
        for e, epoch in enumerate(block):
            if recipe.schedule == "cosine":
                lr = cosine_lr(base_lr, epoch, recipe.epochs)
            for j in range(steps):
                idx = perms[:, e, j * bs : (j + 1) * bs]
                xb = augment(e * steps + j, x[idx])
                with autocast:  # the teacher's forward too, as train_classifier's batch_loss runs it
                    if predict is None:
                        yb = y[idx]  # type: ignore[index]  # y is None only in the teacher regime
                    else:
                        with torch.no_grad():
                            yb = (predict(xb) / recipe.temperature).softmax(-1)
                    grads = step(tensors, xb, yb)
                if adamw:
                    state = adamw_step(tensors, grads, state, lr, recipe.weight_decay)
                else:
                    state = sgd_step(tensors, grads, state, lr, recipe.momentum, recipe.weight_decay)
            if on_epoch is not None:
                on_epoch(epoch, params)
            if recipe.schedule == "step" and lr_decay and epoch == recipe.epochs // 2 + 1:
                lr *= 0.1
                state = None  # train_classifier rebuilds the optimiser here, which resets its state
    write_back(params, models)
    return models

