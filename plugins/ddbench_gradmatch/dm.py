"""DM (distribution matching; Zhao & Bilen, WACV 2023), as ``docs/methods.md`` §6 states it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ddbench.contracts.deviations import Deviation
from ddbench.contracts.interfaces import Artifact, Distiller, Learner, RunContext, TaskView
from ddbench.ops.augment import DSA
from ddbench.vocab import Budget
from ddbench_gradmatch.common import (
    QUICK_EPOCHS,
    QUICK_WHY,
    QUICK_WIDTH,
    SIAMESE_SEEDS,
    FreshNetworks,
    HostSeeds,
    LossLog,
    check_values,
    dsa_strategy,
    eval_recipe,
    image_reason,
)
from ddbench_gradmatch.published import published_rows
from ddbench_gradmatch.sampling import ClassPools, initial_images
from ddbench_gradmatch.siamese import siamese_per_class

LARGE_IPC = 100  # lr_img 10 from this ipc on, 1 below it (§6)


@dataclass
class DMDistiller(Distiller):
    """Distribution matching (§6): per iteration a fresh, frozen random network; per class, match
    the mean embedding of siamese-augmented real and synthetic images (squared distance, real side
    detached, no normalisation); one SGD step on the images for the loss summed over classes.

    Options (defaults are §6's): ``iterations`` (20000; the set after the last one is returned);
    ``lr_img`` (None: 1, 10 for ipc >= 100); ``momentum_img``; ``batch_real`` real images per class
    per iteration (capped at the smallest class); ``init`` ``real`` or ``noise``; ``dsa_strategy``
    (None: the task's, §1). The learner must offer ``embed(model, x)`` (ConvNet-3: the F-dim
    feature before the linear layer). All classes are embedded in one batch per side, which is
    exact for instance norm and mixes the classes in BatchNorm statistics as §6 asks.
    """

    name = "dm"
    resumable = True
    published = published_rows("dm")
    description = "DM: per-class mean-embedding matching under random networks (Zhao & Bilen, WACV 2023)"
    quick: ClassVar[dict[str, Any]] = {"iterations": 120, "batch_real": 32}  # CPU profile
    official_code = "VICO-UoE/DatasetCondensation @ 53f63a6: main_DM.py, utils.py and the repository's README"
    deviations = (
        Deviation("set returned", "evaluates the set after 20,000 iterations, then saves the one after 20,001 (range(Iteration + 1))",
                  "the set after `iterations` (20,000): the one the code evaluates", "the published accuracies are that set's"),
        SIAMESE_SEEDS,
        Deviation("lr_img at ipc 100 and 125 on CIFAR-100", "1 (the README sets 10 from ipc 100 on CIFAR-10 only)",
                  "10 from ipc 100 on every dataset", "one rule for every dataset, CIFAR-10's", "lr_img=None"),
        Deviation("DSA strategy on MNIST and the other digit tasks", "main_DM.py's default for every dataset, "
                  "color_crop_cutout_flip_scale_rotate (the README shows CIFAR-10 only)", "the task's: no flip",
                  "DSA's README: flips do not suit digit datasets", "dsa_strategy=None"),
        Deviation("iterations", "20,000", "120", QUICK_WHY, "profile=quick"),
        Deviation("real images per class per iteration", "256", "32", QUICK_WHY, "profile=quick"),
        QUICK_WIDTH,
        QUICK_EPOCHS,
    )

    iterations: int = 20000
    lr_img: float | None = None
    momentum_img: float = 0.5
    batch_real: int = 256
    init: str = "real"
    dsa_strategy: str | None = None

    def __post_init__(self) -> None:
        check_values(self.momentum_img, self.init, iterations=self.iterations, lr_img=self.lr_img, batch_real=self.batch_real)

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        reason = image_reason(task, self.name, self.dsa_strategy)
        if reason is None and not learner.supports_embedding:
            reason = f"dm matches mean embeddings; learner {learner.name!r} has none (supports_embedding): use convnet"
        return reason

    def recipe(self, task: TaskView, profile: str) -> dict[str, Any]:
        """DM evaluates with per-sample DSA and E = 1000 (§3)."""
        return eval_recipe(profile, "dsa", dsa_strategy(task, self.dsa_strategy))

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        embed = learner.embed
        ipc, classes, device, g = budget.ipc(task), task.num_classes, context.device, context.generator
        assert classes is not None  # supports() rejected regression
        lr_img = self.lr_img or (10.0 if ipc >= LARGE_IPC else 1.0)
        strategy = dsa_strategy(task, self.dsa_strategy)
        seeds = HostSeeds(context.seed)
        networks = FreshNetworks(learner, task, device, seeds)
        dsa = DSA(strategy, seeds(), device)
        pools = ClassPools(task)
        batch_real = min(self.batch_real, pools.smallest)
        syn = initial_images(pools, ipc, self.init, g).requires_grad_(True)
        opt = torch.optim.SGD([syn], lr=lr_img, momentum=self.momentum_img)
        log = LossLog(context.progress, self.iterations)
        ckpt = context.checkpointer(images=syn, opt=opt, generator=g, seeds=seeds.generator, dsa=dsa.generator)
        done, saved = ckpt.restore()
        log.history = list(saved.get("loss", []))
        if done:
            networks.prime()
        while done < self.iterations and not context.should_stop():
            net = networks()
            net.train()
            net.requires_grad_(False)  # a random network, never trained
            real, fake = siamese_per_class(pools.sample(batch_real, g), syn.view(classes, ipc, *syn.shape[1:]), dsa)
            with torch.no_grad():
                mean_real = embed(net, real.flatten(0, 1)).view(classes, batch_real, -1).mean(1)
            mean_syn = embed(net, fake.flatten(0, 1)).view(classes, ipc, -1).mean(1)
            loss = ((mean_real - mean_syn) ** 2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            log(done, loss.detach())
            ckpt.step(done, loss=log.history)
        y = torch.arange(classes, device=device).repeat_interleave(ipc)
        meta = {"iterations": done, "lr_img": lr_img, "batch_real": batch_real, "init": self.init,
                "dsa_strategy": strategy, "loss": log.history, "stopped_early": done < self.iterations}
        return Artifact({"x": syn.detach().clone(), "y": y}, recipe=self.recipe(task, context.profile), meta=meta)
