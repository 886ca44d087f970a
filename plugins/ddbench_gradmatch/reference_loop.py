"""The benchmark's reference for ``dc`` and ``dsa``: their outer iteration as the published code's
approach runs it (docs/methods.md §5), a plain loop with one network step per launch.

This is not a distiller (it is registered nowhere). ``ddbench gradmatch-timing --reference``
times it beside :class:`~ddbench_gradmatch.dc.DCDistiller`, and ``tests/test_gradmatch.py``
checks that both are the same algorithm. What it does per matching step, class by class: a
forward and backward pass of a real batch gives that class's gradients (detached); a forward and
backward pass of the class's synthetic images with ``create_graph`` gives gradients that stay
differentiable in the images; the layer-wise distance of §5 between the two is added to the
loss. After the last class, one backward pass of the summed loss (``loss.backward()``, which also
fills the network's ``.grad``, cleared before the inner loop's first step) and one SGD step on the
images; then (except after the last matching step) the network trains on the detached synthetic
set, one batch per step. Nothing is batched across classes or cut into blocks, nothing is vmapped.

It is written from §5 alone (the distance included) and shares none of ``dc.py``'s and
``matching.py``'s gradient, distance or training code: only the setup (the loop lengths, fresh
networks, class pools, the initial images, BatchNorm freezing). Its random draws are taken like
``DCDistiller``'s, in the same order from the same generators (real batches for all classes at
once, one siamese DSA draw per class for a whole step, the inner loop's per-sample DSA drawn per
network training): the draws are not what is timed, and equal draws let a test compare the two
runs end to end.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddbench.contracts.interfaces import Learner, RunContext, TaskView
from ddbench.ops.augment import DSA, Transform, apply
from ddbench.vocab import Budget
from ddbench_gradmatch.common import FreshNetworks, HostSeeds, has_batchnorm
from ddbench_gradmatch.dc import DCDistiller, freeze_batchnorm, loops_for_ipc
from ddbench_gradmatch.sampling import ClassPools, initial_images


def layer_distance(gs: list[Tensor], gr: list[Tensor], kind: str = "ours") -> Tensor:
    """§5's distance between one class's synthetic and real gradients (lists in parameter order).

    ``ours``: per parameter tensor, 1-D tensors skipped, the rest viewed as (output rows, rest);
    the sum over rows of 1 - cosine (the product of norms plus 1e-6 in the denominator), summed
    over tensors. ``mse``: the squared difference of all entries; ``cos``: 1 - the cosine of the
    whole flattened gradients.
    """
    if kind == "ours":
        total = gs[0].new_zeros(())
        for a, b in zip(gs, gr):
            if a.dim() == 1:  # biases, norm scales and shifts contribute nothing
                continue
            a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
            total = total + torch.sum(1 - torch.sum(a * b, dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6))
        return total
    a, b = torch.cat([g.reshape(-1) for g in gs]), torch.cat([g.reshape(-1) for g in gr])
    if kind == "mse":
        return torch.sum((a - b) ** 2)
    if kind == "cos":
        return 1 - torch.sum(a * b) / (a.norm() * b.norm() + 1e-6)
    raise ValueError(f"unknown matching distance {kind!r}")


def matching_loss(net: nn.Module, real: Tensor, syn: Tensor, distance: str = "ours", omegas: Transform | None = None) -> Tensor:
    """The summed matching loss of one step, class by class, differentiable in ``syn``.

    ``real``: ``(C, B, *image)``, ``syn``: ``(C * ipc, *image)`` in class order; ``omegas`` (DSA):
    one siamese transform per class, leading shape ``(C,)``, applied to the class's real and
    synthetic images alike. The network's own ``.grad`` stays untouched.
    """
    params = list(net.parameters())
    classes = real.shape[0]
    ipc = syn.shape[0] // classes
    loss = syn.new_zeros(())
    for c in range(classes):
        img_real, img_syn = real[c], syn[c * ipc : (c + 1) * ipc]
        if omegas is not None:
            img_real = apply(img_real, omegas[c : c + 1].repeat(len(img_real)))
            img_syn = apply(img_syn, omegas[c : c + 1].repeat(len(img_syn)))
        lab_real = torch.full((len(img_real),), c, dtype=torch.long, device=real.device)
        lab_syn = torch.full((len(img_syn),), c, dtype=torch.long, device=real.device)
        gw_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(img_real), lab_real), params)]
        gw_syn = torch.autograd.grad(F.cross_entropy(net(img_syn), lab_syn), params, create_graph=True)
        loss = loss + layer_distance(list(gw_syn), gw_real, distance)
    return loss


def train_on_synthetic(net: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, epochs: int, batch: int,
                       augment: DSA | None, generator: torch.Generator) -> None:
    """The inner loop: ``epochs`` epochs of shuffled batches of ``batch`` synthetic images,
    cross-entropy, one SGD step per batch; per-sample DSA (DSA) drawn for all its steps at once."""
    net.train()
    steps = math.ceil(len(x) / batch)
    plan = None if augment is None else augment.plan(epochs * steps, batch, x.shape[-1])
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator, device=x.device)
        for j in range(steps):
            idx = order[j * batch : (j + 1) * batch]
            img = x[idx]
            if plan is not None:
                img = apply(img, plan[epoch * steps + j, : len(idx)])
            loss = F.cross_entropy(net(img), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def reference_distill(distiller: DCDistiller, task: TaskView, budget: Budget, learner: Learner,
                      context: RunContext) -> tuple[Tensor, list[float]]:
    """Run ``distiller``'s configuration (its options; ``dsa`` when it is a
    :class:`~ddbench_gradmatch.dc.DSADistiller`) the reference way for ``distiller.iterations``
    outer iterations. Returns the synthetic images and each outer iteration's loss (the mean
    over its matching steps, as ``DCDistiller`` logs it)."""
    ipc, classes, device, g = budget.ipc(task), task.num_classes, context.device, context.generator
    assert classes is not None
    outer, inner = loops_for_ipc(ipc)
    outer, inner = distiller.outer_loop or outer, distiller.inner_loop or inner
    lr_img = distiller.lr_img or (0.01 if learner.name == "mlp" else 0.1)
    seeds = HostSeeds(context.seed)
    networks = FreshNetworks(learner, task, device, seeds)
    pools = ClassPools(task)
    batch_real = min(distiller.batch_real, pools.smallest)
    syn = initial_images(pools, ipc, distiller.init, g).requires_grad_(True)
    y_syn = torch.arange(classes, device=device).repeat_interleave(ipc)
    opt_img = torch.optim.SGD([syn], lr=lr_img, momentum=distiller.momentum_img)
    siamese, per_sample = distiller.augmenters(task, seeds, device)
    losses = []
    for _ in range(distiller.iterations):
        net = networks()
        opt_net = torch.optim.SGD(net.parameters(), lr=distiller.lr_net)
        total = 0.0
        for t in range(outer):
            if has_batchnorm(net):
                freeze_batchnorm(net, pools, g)
            real = pools.sample(batch_real, g)
            omegas = None if siamese is None else siamese.plan(classes, 1, real.shape[-1])[:, 0]
            loss = matching_loss(net, real, syn, distiller.distance, omegas)
            opt_img.zero_grad()
            loss.backward()
            opt_img.step()
            total += loss.item()
            if t == outer - 1:
                break
            train_on_synthetic(net, opt_net, syn.detach(), y_syn, inner, distiller.batch_train, per_sample, g)
        losses.append(total / outer)
    return syn.detach(), losses
