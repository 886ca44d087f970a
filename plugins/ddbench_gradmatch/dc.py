"""DC (gradient matching; Zhao, Mopuri & Bilen, ICLR 2021) and DSA (DC with differentiable siamese
augmentation; Zhao & Bilen, ICML 2021), as ``docs/methods.md`` §5 states them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddbench.ops.augment import DSA, apply
from ddbench.interfaces import Artifact, Budget, Distiller, Learner, RunContext, TaskView
from ddbench_gradmatch.common import (
    MNIST_TASKS, FreshNetworks, HostSeeds, LossLog, check_values, classification_reason, dsa_strategy, eval_recipe, has_batchnorm,
    image_reason,
)
from ddbench_gradmatch.matching import check_distance, class_gradients, gradient_distance
from ddbench_gradmatch.sampling import ClassPools, initial_images
from ddbench_gradmatch.siamese import siamese_per_class

# ipc -> (outer_loop T, inner_loop) of the official code (§5).
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
# The CPU profile: fewer outer iterations, each one image update on a fresh network (T = 1 at every
# ipc, so ipc 10 costs about what ipc 1 does), and 32 real images per class.
QUICK = {"iterations": 80, "outer_loop": 1, "batch_real": 32}
BN_IMAGES_PER_CLASS = 16  # BatchNorm learners: real images per class that set the frozen statistics (§5)


def loops_for_ipc(ipc: int) -> tuple[int, int]:
    """(T, inner_loop) for ``ipc``: the §5 table; above 50 its (50, 10) row (the maintainer's advice
    for large ipc); other ipc [ours]: the row of the nearest tabulated ipc, the larger on a tie."""
    if ipc in LOOPS:
        return LOOPS[ipc]
    if ipc > max(LOOPS):
        return LOOPS[max(LOOPS)]
    return LOOPS[min(LOOPS, key=lambda k: (abs(k - ipc), -k))]


@dataclass
class DCDistiller(Distiller):
    """Gradient matching (§5): per class, match the gradient of a fresh network on the synthetic
    images to its gradient on real images, with the layer-wise distance; one summed SGD step on the
    images per outer step; train the network on the synthetic set between outer steps.

    Options (defaults are §5's): ``iterations`` K outer iterations (the set after K is returned,
    the one the official code evaluates at k = K); ``outer_loop``/``inner_loop`` T and the inner
    epochs (None: from ipc, :func:`loops_for_ipc`); ``lr_img`` (None: 0.1, 0.01 for an MLP
    learner); ``lr_net``; ``momentum_img``; ``batch_real`` real images per class per step (capped at
    the smallest class); ``batch_train``; ``init`` ``noise`` (DC) or ``real``; ``distance`` ``ours``,
    ``mse`` or ``cos``; ``class_batch`` classes per batched gradient call (None: all; lower it to
    save memory, the update stays the sum over all classes). ``quick`` profile: :data:`QUICK`.
    """

    name = "dc"
    description = "DC: per-class gradient matching with the layer-wise distance (Zhao et al., ICLR 2021)"
    quick = QUICK

    iterations: int = 1000
    outer_loop: int | None = None
    inner_loop: int | None = None
    lr_img: float | None = None
    lr_net: float = 0.01
    momentum_img: float = 0.5
    batch_real: int = 256
    batch_train: int = 256
    init: str = "noise"
    distance: str = "ours"
    class_batch: int | None = None

    def __post_init__(self) -> None:
        check_values(self.momentum_img, self.init, iterations=self.iterations, outer_loop=self.outer_loop,
                      inner_loop=self.inner_loop, lr_img=self.lr_img, lr_net=self.lr_net, batch_real=self.batch_real,
                      batch_train=self.batch_train, class_batch=self.class_batch)
        check_distance(self.distance)

    # -- what differs between DC and DSA ------------------------------------------------------
    def supports(self, task: TaskView, learner: Learner) -> str | None:
        return classification_reason(task, self.name)

    def augmenters(self, task: TaskView, seeds: HostSeeds, device: torch.device) -> tuple[DSA | None, DSA | None]:
        """(siamese augmentation before both gradients, per-sample augmentation of the inner loop)."""
        return None, None

    def recipe(self, task: TaskView, profile: str) -> dict[str, Any]:
        """DC evaluates without augmentation (the task's default), MNIST with DC-augment, E = 1000 (§3)."""
        return eval_recipe(profile, "dc") if task.name in MNIST_TASKS else {}

    # -- the algorithm --------------------------------------------------------------------------
    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        ipc, classes, device, g = budget.ipc(task), task.num_classes, context.device, context.generator
        assert classes is not None  # supports() rejected regression
        outer, inner = loops_for_ipc(ipc)
        outer, inner = self.outer_loop or outer, self.inner_loop or inner
        lr_img = self.lr_img or (0.01 if learner.name == "mlp" else 0.1)
        chunk = min(self.class_batch or classes, classes)
        seeds = HostSeeds(context.seed)
        networks = FreshNetworks(learner, task, device, seeds)
        pools = ClassPools(task)
        batch_real = min(self.batch_real, pools.smallest)
        syn = initial_images(pools, ipc, self.init, g).requires_grad_(True)
        y_syn = torch.arange(classes, device=device).repeat_interleave(ipc)
        opt = torch.optim.SGD([syn], lr=lr_img, momentum=self.momentum_img)
        siamese, per_sample = self.augmenters(task, seeds, device)
        log = LossLog(context.progress, self.iterations)
        done = 0
        while done < self.iterations and not context.should_stop():
            net = networks()
            net_opt = torch.optim.SGD(net.parameters(), lr=self.lr_net)  # no momentum, no weight decay (§5)
            loss = syn.new_zeros(())
            for t in range(outer):
                if has_batchnorm(net):
                    freeze_batchnorm(net, pools, g)
                opt.zero_grad(set_to_none=True)
                loss = loss + self.match(net, pools.sample(batch_real, g), syn, chunk, siamese) / outer
                opt.step()  # ONE update per outer step, for the loss summed over classes
                if t == outer - 1:
                    break
                train_network(net, net_opt, syn.detach(), y_syn, inner, self.batch_train, per_sample, g)
            done += 1
            log(done, loss)
        meta = {"iterations": done, "outer_loop": outer, "inner_loop": inner, "lr_img": lr_img, "batch_real": batch_real,
                "init": self.init, "distance": self.distance, "loss": log.history, "stopped_early": done < self.iterations}
        return Artifact({"x": syn.detach().clone(), "y": y_syn}, recipe=self.recipe(task, context.profile), meta=meta)

    def match(self, net: nn.Module, real: Tensor, syn: Tensor, chunk: int, siamese: DSA | None) -> Tensor:
        """Sum over classes of D(grad on synthetic, grad on real) for real ``(C, B, ...)`` and the
        class-ordered synthetic set; backpropagated into ``syn.grad`` ``chunk`` classes at a time
        (the same summed gradient, less memory). Returns the loss, detached."""
        classes = real.shape[0]
        fake = syn.view(classes, -1, *syn.shape[1:])
        labels = torch.arange(classes, device=real.device)[:, None]
        total = syn.new_zeros(())
        for lo in range(0, classes, chunk):
            part = slice(lo, lo + chunk)
            xr, xs = (real[part], fake[part]) if siamese is None else siamese_per_class(real[part], fake[part], siamese)
            gr = class_gradients(net, xr, labels[part].expand(-1, xr.shape[1]))
            gs = class_gradients(net, xs, labels[part].expand(-1, xs.shape[1]))
            loss = gradient_distance(gs, gr, self.distance).sum()
            loss.backward()
            total = total + loss.detach()
        return total


@dataclass
class DSADistiller(DCDistiller):
    """DSA (§5 last paragraph, §4): DC with real initialisation, one siamese DSA draw per class
    before both gradients, per-sample DSA in the inner loop, and DSA with E = 1000 at evaluation.
    ``dsa_strategy`` (None: the task's, §1)."""

    name = "dsa"
    description = "DSA: gradient matching with differentiable siamese augmentation (Zhao & Bilen, ICML 2021)"
    quick = QUICK

    init: str = "real"
    dsa_strategy: str | None = None

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        return image_reason(task, self.name, self.dsa_strategy)

    def augmenters(self, task: TaskView, seeds: HostSeeds, device: torch.device) -> tuple[DSA | None, DSA | None]:
        strategy = dsa_strategy(task, self.dsa_strategy)
        return DSA(strategy, seeds(), device), DSA(strategy, seeds(), device)

    def recipe(self, task: TaskView, profile: str) -> dict[str, Any]:
        return eval_recipe(profile, "dsa", dsa_strategy(task, self.dsa_strategy))


def freeze_batchnorm(net: nn.Module, pools: ClassPools, generator: torch.Generator) -> None:
    """BatchNorm learners only (§5): forward 16 real images per class in train mode, then put the
    BatchNorm layers in eval mode so the matching uses those frozen statistics."""
    net.train()
    with torch.no_grad():
        net(pools.sample(min(BN_IMAGES_PER_CLASS, pools.smallest), generator).flatten(0, 1))
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def train_network(net: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, epochs: int, batch: int,
                  augment: DSA | None, generator: torch.Generator) -> None:
    """The inner loop (§5): ``epochs`` epochs of shuffled batches of the (detached) synthetic set,
    plain cross-entropy, per-sample DSA for DSA."""
    net.train()
    steps = math.ceil(len(x) / batch)
    plan = None if augment is None else augment.plan(epochs * steps, batch, x.shape[-1])  # all draws at once
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator, device=x.device)
        for j in range(steps):
            idx = order[j * batch : (j + 1) * batch]
            xb = x[idx] if plan is None else apply(x[idx], plan[epoch * steps + j, : len(idx)])
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
